"""Parameter-free reshaping of the feature axis used by SLL networks: zero-padding and read-out.

Zero-padding and truncation of the channel/feature axis have norm 1, so they keep a bound; with
`scale` they multiply it by `scale`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipcore.layers.ops import conv_op, linear_op


class PaddingChannels(nn.Module):
    """(b, c_in, H, W) -> (b, c_out, H, W): scale, then zero channels c_in..c_out-1."""

    def __init__(self, in_channels: int, out_channels: int, scale: float = 1.0) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"out_channels ({out_channels}) must be >= in_channels ({in_channels})")
        self.in_channels, self.out_channels, self.scale = in_channels, out_channels, float(scale)

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(self.scale * x, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))

    def lipschitz_bound(self) -> float:
        """Zero-padding is an isometry: the bound is |scale|."""
        return abs(self.scale)

    def export(self, circular: str = "dft") -> nn.Module:
        """A 1x1 Conv2d with a scaled 0/1 matrix."""
        w = torch.zeros(self.out_channels, self.in_channels, 1, 1)
        w[torch.arange(self.in_channels), torch.arange(self.in_channels)] = self.scale
        return conv_op(w, None)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, scale={self.scale:g}"


class PaddingFeatures(nn.Module):
    """(b, f_in) -> (b, f_out): scale, then zero features f_in..f_out-1."""

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0) -> None:
        super().__init__()
        if out_features < in_features:
            raise ValueError(f"out_features ({out_features}) must be >= in_features ({in_features})")
        self.in_features, self.out_features, self.scale = in_features, out_features, float(scale)

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(self.scale * x, (0, self.out_features - self.in_features))

    def lipschitz_bound(self) -> float:
        """Zero-padding is an isometry: the bound is |scale|."""
        return abs(self.scale)

    def export(self, circular: str = "dft") -> nn.Module:
        """A Linear with a scaled 0/1 matrix."""
        w = torch.zeros(self.out_features, self.in_features)
        w[torch.arange(self.in_features), torch.arange(self.in_features)] = self.scale
        return linear_op(w, None)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, scale={self.scale:g}"


class FirstChannel(nn.Module):
    """Read out the first `out` channels/features, times `scale`: (b, c, ...) -> (b, out, ...)."""

    def __init__(self, out: int, scale: float = 1.0) -> None:
        super().__init__()
        self.out, self.scale = out, float(scale)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] < self.out:
            raise ValueError(f"FirstChannel({self.out}) got only {x.shape[1]} channels")
        return self.scale * x[:, : self.out]

    def lipschitz_bound(self) -> float:
        """Truncation has norm 1: the bound is |scale|."""
        return abs(self.scale)

    def extra_repr(self) -> str:
        return f"{self.out}, scale={self.scale:g}"

"""Orthogonal (Cayley) layers of Trockman & Kolter (2021), the paper's main baseline.

The weight applied is Q = cayley(alpha W / ||W||_F), so ||Q||_2 = 1 and the layer is 1-Lipschitz in
`scale * x`. Convolutions are circular, with one Cayley transform per Fourier frequency.
Parameters: `weight` (out, in) or (out, in_eff, k_eff, k_eff), `bias` (out), `alpha` (scalar).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipcore.catalog.layer_families import register_layer
from lipcore.layers.bounds import hermitian_response, spectral_norm
from lipcore.layers.cayley import cayley
from lipcore.layers.fourier import FourierConv, kernel_fft, normalized_response
from lipcore.layers.init import torch_default_
from lipcore.layers.reparam import Reparameterized


class _OrthogonLinearBase(Reparameterized):
    activation: bool = False

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.scale = in_features, out_features, float(scale)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw))
        torch_default_(self.weight, self.bias)
        self.alpha = nn.Parameter(self.weight.detach().norm().clone())

    def reparameterize(self) -> tuple[Tensor]:
        return (cayley(self.alpha * self.weight / self.weight.norm()),)

    def forward(self, x: Tensor) -> Tensor:
        (q,) = self.effective()
        y = F.linear(self.scale * x, q, self.bias)
        return F.relu(y) if self.activation else y

    def lipschitz_bound(self) -> float:
        """|scale| * ||Q||_2, exact SVD in float64 of the served Q (1 up to rounding)."""
        return abs(self.scale) * spectral_norm(self.effective()[0])

    def export(self, circular: str = "dft") -> nn.Module:
        """Linear(scale Q, b) [/ ReLU]."""
        from lipcore import export as X

        with torch.no_grad():
            (q,) = self.effective()
            lin = X.linear_op((self.scale * X.as_float64(q)).float(), self.bias)
            return nn.Sequential(lin, nn.ReLU()) if self.activation else lin

    def paper_weight(self, previous: Any = None) -> tuple[Tensor | None, Any]:
        """Q, the orthogonal weight applied."""
        return self.effective()[0].detach(), None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale:g}"


@register_layer("Orthogon", "fc")
class OrthogonFc(_OrthogonLinearBase):
    """Orthogonal fully connected layer with ReLU: (batch, in) -> (batch, out)."""

    activation = True


@register_layer("Orthogon", "lin")
class OrthogonLin(_OrthogonLinearBase):
    """Orthogonal fully connected layer without activation: (batch, in) -> (batch, out)."""


class _OrthogonConvBase(FourierConv):
    activation: bool = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        scale: float = 1.0,
        *,
        input_size: int,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, scale, input_size)
        kw = {"device": device, "dtype": dtype}
        k = self.kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, self.fft_in_channels, k, k, **kw))
        self.bias = nn.Parameter(torch.empty(out_channels, **kw))
        torch_default_(self.weight, self.bias)
        self.alpha = nn.Parameter(kernel_fft(self.weight.detach(), self.n).norm().clone())

    def reparameterize(self) -> tuple[Tensor]:
        return (cayley(normalized_response(self.weight, self.n, self.alpha)),)

    def forward(self, x: Tensor) -> Tensor:
        (q,) = self.effective()
        y = self._enter_response(q, x, self.bias)
        return F.relu(y) if self.activation else y

    def lipschitz_bound(self) -> float:
        """|scale| * max over frequencies of ||Q(f)||_2 of the served real operator (float64)."""
        return abs(self.scale) * spectral_norm(hermitian_response(self.effective()[0], self.n))

    def export(self, circular: str = "dft") -> nn.Module:
        """[PixelUnshuffle] / circular convolution Q (scale folded in) [/ ReLU]."""
        from lipcore import export as X

        with torch.no_grad():
            (m,) = (X.as_float64(t) for t in self.effective())
            conv = X.circular_op(m, self.n, self.fft_in_channels, self.bias, self.scale, circular)
            return X.strided_op(self, nn.Sequential(conv, nn.ReLU()) if self.activation else conv)


@register_layer("Orthogon", "conv")
class OrthogonConv(_OrthogonConvBase):
    """Orthogonal circular convolution with ReLU: (b, in, N, N) -> (b, out, N/s, N/s)."""

    activation = True


class OrthogonConvLin(_OrthogonConvBase):
    """Orthogonal circular convolution without activation."""

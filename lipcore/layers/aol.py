"""Almost-orthogonal layers, AOL (Prach & Lampert, 2022), a baseline of the paper.

The free weight W is rescaled by D = diag(sum_j |W^T W|_ij)^(-1/2) (fully connected: on the input
side) or by the output-channel analogue computed from K * K^T (convolutions, zero padding k // 2);
then ||W D||_2 <= 1. Parameters: `weights` (out, in) or `kernel` (out, in, k, k), `bias` (out).

Underflow: W D is unchanged when W is multiplied by any s > 0, so the Gram sums are formed from
W / max|W| (entries <= 1). A Gram sum below `underflow_floor` (where products flushed to zero or
denormal could make it too small, i.e. the scale too large) gives scale 0 for that row or column:
zeroing part of a matrix whose AOL bound holds keeps the bound. Weights at 1e-30 or exactly 0 thus
give a layer of norm <= 1, never the blow-up of a clamped 1 / sqrt(tiny).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipcore.catalog.layer_families import register_layer
from lipcore.layers.bounds import aol_conv_bound
from lipcore.layers.init import xavier_
from lipcore.layers.linear import ScaledLinear
from lipcore.layers.ops import as_float64, conv_op
from lipcore.layers.reparam import Reparameterized


def underflow_floor(dtype: torch.dtype, terms: int) -> float:
    """Smallest sum of `terms` products (of entries <= 1) trusted to relative accuracy eps:
    each product lost to flush-to-zero or denormals is below `tiny`, so terms * tiny / eps."""
    fi = torch.finfo(dtype)
    return terms * fi.tiny / fi.eps


def safe_rsqrt(total: Tensor, terms: int) -> Tensor:
    """total^-1/2 where total is a trustworthy sum of `terms` products, else 0 (see module doc)."""
    ok = total > underflow_floor(total.dtype, terms)
    return torch.where(ok, torch.rsqrt(torch.where(ok, total, torch.ones_like(total))), torch.zeros_like(total))


def normalized(w: Tensor) -> Tensor:
    """w / max|w| (detached scale; exactly 0 stays 0): the AOL and SLL maps are scale-invariant,
    and entries <= 1 keep the Gram sums out of the underflow range."""
    s = w.detach().abs().amax()
    ok = s >= torch.finfo(w.dtype).tiny  # a denormal maximum is treated as the zero matrix
    return torch.where(ok, w / torch.where(ok, s, torch.ones_like(s)), torch.zeros_like(w))


def gram_abs_rowsum(w: Tensor, block: int = 2048) -> Tensor:
    """sum_j |W^T W|_ij for W (out, in): (in,), computed by column blocks.

    The Gram matrix is symmetric, so only blocks on and above the diagonal are formed; each
    off-diagonal block serves its rows and its columns. For the paper's large KWL (in = 16384) that
    is 36 instead of 64 block products and never a 1 GB in x in matrix.
    """
    n = w.shape[1]
    if n <= block:
        return (w.T @ w).abs().sum(1)
    parts = list(w.split(block, dim=1))
    sums = [torch.zeros(p.shape[1], dtype=w.dtype, device=w.device) for p in parts]
    for a, wa in enumerate(parts):
        for b in range(a, len(parts)):
            g = (wa.T @ parts[b]).abs()
            sums[a] = sums[a] + g.sum(1)
            if b != a:
                sums[b] = sums[b] + g.sum(0)
    return torch.cat(sums)


class _AolLinearBase(ScaledLinear):
    """W D (see the module doc) applied to `scale * x`: forward, bound and export are ScaledLinear's."""

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, scale)
        kw = {"device": device, "dtype": dtype}
        self.weights = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw))
        xavier_(self.weights, self.bias)

    def reparameterize(self) -> tuple[Tensor]:
        w = normalized(self.weights)
        return (w * safe_rsqrt(gram_abs_rowsum(w), w.shape[0] * w.shape[1])[None, :],)

    def paper_weight(self, previous: Any = None) -> tuple[Tensor | None, Any]:
        """scale * W D, the rescaled weight applied to the layer's input."""
        return (self.scale * self.effective()[0]).detach(), None


@register_layer("Aol", "fc")
class AolFc(_AolLinearBase):
    """AOL fully connected layer with ReLU: (batch, in) -> (batch, out)."""

    activation = True


@register_layer("Aol", "lin")
class AolLin(_AolLinearBase):
    """AOL fully connected layer without activation."""


class _AolConvBase(Reparameterized):
    activation: bool = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        scale: float = 1.0,
        *,
        input_size: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if stride != 1:
            raise ValueError(f"AOL convolutions support stride 1 only (the paper pools instead), got {stride}")
        if kernel_size % 2 == 0:
            raise ValueError(f"AOL convolutions need an odd kernel_size for 'same' padding, got {kernel_size}")
        kw = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels, self.scale = in_channels, out_channels, float(scale)
        self.input_size = input_size  # accepted for a uniform signature; zero padding needs no size
        self.padding = (kernel_size - 1) // 2
        self.kernel = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size, **kw))
        self.bias = nn.Parameter(torch.empty(out_channels, **kw))
        xavier_(self.kernel, self.bias)

    def reparameterize(self) -> tuple[Tensor]:
        k = normalized(self.kernel)
        kkt = F.conv2d(k, k, padding=k.shape[-1] - 1)  # (out, out, 2k-1, 2k-1)
        terms = k.shape[1] * k.shape[2] * k.shape[3] * kkt.shape[1] * kkt.shape[2] * kkt.shape[3]
        return (k * safe_rsqrt(kkt.abs().sum((1, 2, 3)), terms)[:, None, None, None],)

    def forward(self, x: Tensor) -> Tensor:
        (k,) = self.effective()
        y = F.conv2d(self.scale * x, k, self.bias, padding=self.padding)
        return F.relu(y) if self.activation else y

    def lipschitz_bound(self) -> float:
        """|scale| * Schur bound of the served zero-padded convolution (any input size)."""
        return abs(self.scale) * aol_conv_bound(self.effective()[0], self.kernel)

    def export(self, circular: str = "dft") -> nn.Module:
        """Conv2d(scale K, b), zero padding k // 2 [/ ReLU]."""
        with torch.no_grad():
            (k,) = self.effective()
            conv = conv_op((self.scale * as_float64(k)).float(), self.bias, self.padding)
            return nn.Sequential(conv, nn.ReLU()) if self.activation else conv

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel.shape[-1]}, scale={self.scale:g}"


@register_layer("Aol", "conv")
class AolConv(_AolConvBase):
    """AOL convolution with ReLU, zero padding: (b, in, H, W) -> (b, out, H, W)."""

    activation = True


class AolConvLin(_AolConvBase):
    """AOL convolution without activation."""

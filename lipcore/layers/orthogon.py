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
from lipcore.layers.fourier import CayleyConv, normalized_response
from lipcore.layers.init import torch_default_
from lipcore.layers.linear import ScaledLinear
from lipcore.layers.ops import as_float64, circular_op, strided_op


class _OrthogonLinearBase(ScaledLinear):
    """Q applied to `scale * x`: forward, bound (1 up to rounding) and export are ScaledLinear's."""

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, scale)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw))
        torch_default_(self.weight, self.bias)
        self.alpha = nn.Parameter(self.weight.detach().norm().clone())

    def reparameterize(self) -> tuple[Tensor]:
        return (cayley(self.alpha * self.weight / self.weight.norm()),)

    def paper_weight(self, previous: Any = None) -> tuple[Tensor | None, Any]:
        """Q, the orthogonal weight applied."""
        return self.effective()[0].detach(), None


@register_layer("Orthogon", "fc")
class OrthogonFc(_OrthogonLinearBase):
    """Orthogonal fully connected layer with ReLU: (batch, in) -> (batch, out)."""

    activation = True


@register_layer("Orthogon", "lin")
class OrthogonLin(_OrthogonLinearBase):
    """Orthogonal fully connected layer without activation: (batch, in) -> (batch, out)."""


class _OrthogonConvBase(CayleyConv):
    """Q(f) = cayley(alpha W(f) / ||W||_F) per frequency (parameters: see CayleyConv)."""

    activation: bool = False

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
        with torch.no_grad():
            (m,) = (as_float64(t) for t in self.effective())
            conv = circular_op(m, self.n, self.fft_in_channels, self.bias, self.scale, circular)
            return strided_op(self, nn.Sequential(conv, nn.ReLU()) if self.activation else conv)


@register_layer("Orthogon", "conv")
class OrthogonConv(_OrthogonConvBase):
    """Orthogonal circular convolution with ReLU: (b, in, N, N) -> (b, out, N/s, N/s)."""

    activation = True


class OrthogonConvLin(_OrthogonConvBase):
    """Orthogonal circular convolution without activation."""

"""Sandwich layers (Wang & Manchester, ICML 2023): gamma-Lipschitz by construction, SDP-tight.

A sandwich layer computes h -> sqrt(2) A^T Psi relu(sqrt(2) Psi^-1 B h + b), where [A B] is a row
block of an orthogonal matrix (Cayley transform of a free matrix, scaled by a learned `alpha`) and
Psi = diag(exp(psi)). It is 1-Lipschitz from `scale * h` to its output; networks put
`scale = sqrt(gamma)` on their first and last layers.

Parameters (names and shapes as the reference vectors): fully connected `weight`
(out, in + out), `bias` (out), `alpha` (scalar), `psi` (out); convolutional `weight`
(out, in_eff + out, k_eff, k_eff) with in_eff/k_eff after the stride-2 rearrangement.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipcore.catalog.layer_families import register_layer
from lipcore.layers.bounds import hermitian_response, sandwich_bound, spectral_norm
from lipcore.layers.cayley import cayley, matmul
from lipcore.layers.fourier import CayleyConv, apply_response, normalized_response
from lipcore.layers.init import torch_default_
from lipcore.layers.ops import SandwichCore, as_float64, circular_op, linear_op, strided_op
from lipcore.layers.reparam import Reparameterized

SQRT2 = math.sqrt(2.0)


class _SandwichLinearBase(Reparameterized):
    def __init__(self, in_features: int, out_features: int, scale: float, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.scale = in_features, out_features, float(scale)
        self.weight = nn.Parameter(torch.empty(out_features, in_features + out_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw))
        torch_default_(self.weight, self.bias)
        # alpha starts at ||W||_F so the initial orthogonal factor is cayley(W) itself.
        self.alpha = nn.Parameter(self.weight.detach().norm().clone())

    def _factors(self) -> tuple[Tensor, Tensor]:
        """(A, B): A (out, out), B (out, in), rows of one orthogonal matrix."""
        q = cayley(self.weight * (self.alpha / self.weight.norm()))  # (one pass over W, not two)
        return q[:, : self.out_features], q[:, self.out_features :]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale:g}"


@register_layer("Sandwich", "fc")
class SandwichFc(_SandwichLinearBase):
    """Fully connected sandwich layer with ReLU: (batch, in) -> (batch, out), 1-Lipschitz in `scale*x`."""

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, scale, device, dtype)
        self.psi = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype))

    def reparameterize(self) -> tuple[Tensor, Tensor]:
        a, b = self._factors()
        b_in = (SQRT2 * torch.exp(-self.psi))[:, None] * b  # sqrt2 Psi^-1 B
        a_out = (SQRT2 * torch.exp(self.psi))[:, None] * a  # (sqrt2 A^T Psi)^T
        return a_out, b_in

    def forward(self, x: Tensor) -> Tensor:
        a_out, b_in = self.effective()
        if self.scale != 1.0:  # (a multiply by 1 would still be a pass over x, forward and back)
            x = self.scale * x
        # (the linear's output is not saved for its backward: relu in place saves a buffer)
        z = F.relu(F.linear(x, b_in, self.bias), inplace=True)
        return z @ a_out

    def lipschitz_bound(self) -> float:
        """|scale| * the sandwich inequality checked on the served factors (bounds.sandwich_bound)."""
        a_out, b_in = self.effective()
        return abs(self.scale) * sandwich_bound(a_out.mT, b_in, self.psi)

    def export(self, circular: str = "dft") -> nn.Module:
        """Linear(sqrt2 Psi^-1 B scale, b) / ReLU / Linear(sqrt2 A^T Psi) (lipcore.layers.ops.SandwichCore)."""
        with torch.no_grad():
            a_out, b_in = (as_float64(t) for t in self.effective())
            b = linear_op((self.scale * b_in).float(), self.bias)
            psi = tuple(self.psi.double().tolist())
            return SandwichCore(b, linear_op(a_out.T.float(), None), self.scale, psi)

    def paper_weight(self, previous: Any = None) -> tuple[Tensor | None, Any]:
        """W_k = 2 Psi_k^-1 B_k A_{k-1}^T Psi_{k-1}, the weight of the equivalent feed-forward form
        (A_{-1} = I, Psi_{-1} = I / 2 for the first layer); state (A_k, psi_k)."""
        return _feedforward_weight(self, self.psi, previous)


@register_layer("Sandwich", "lin")
class SandwichLin(_SandwichLinearBase):
    """Last (linear) sandwich layer: y = B (scale x) + b, or y = 2 A^T B (scale x) + b with `ab=True`."""

    def __init__(
        self, in_features: int, out_features: int, scale: float = 1.0, ab: bool = False, device=None, dtype=None
    ) -> None:
        super().__init__(in_features, out_features, scale, device, dtype)
        self.ab = ab

    def reparameterize(self) -> tuple[Tensor]:
        a, b = self._factors()
        return ((2 * a.T @ b) if self.ab else b,)

    def forward(self, x: Tensor) -> Tensor:
        (w,) = self.effective()
        return F.linear(self.scale * x, w, self.bias)

    def lipschitz_bound(self) -> float:
        """|scale| * ||W||_2 (exact SVD in float64 of the served weight)."""
        return abs(self.scale) * spectral_norm(self.effective()[0])

    def export(self, circular: str = "dft") -> nn.Module:
        """One Linear (the input `scale` folded into the weight)."""
        with torch.no_grad():
            (w,) = self.effective()
            return linear_op((self.scale * as_float64(w)).float(), self.bias)

    def paper_weight(self, previous: Any = None) -> tuple[Tensor | None, Any]:
        """As SandwichFc's, with Psi = 2 I: the last layer acts as if it had psi = log 2."""
        with torch.no_grad():
            psi = torch.full((self.out_features,), math.log(2.0), dtype=self.weight.dtype, device=self.weight.device)
        return _feedforward_weight(self, psi, previous)


def _feedforward_weight(layer: _SandwichLinearBase, psi: Tensor, previous: Any) -> tuple[Tensor, Any]:
    with torch.no_grad():
        a, b = layer._factors()
        if isinstance(previous, tuple) and len(previous) == 2:
            a0, psi0 = previous
        else:
            a0 = torch.eye(b.shape[1], dtype=b.dtype, device=b.device)
            psi0 = torch.full((b.shape[1],), -math.log(2.0), dtype=b.dtype, device=b.device)
        w = 2 * torch.diag(torch.exp(-psi)) @ b @ a0.T @ torch.diag(torch.exp(psi0))
    return w, (a, psi)


class _SandwichConvBase(CayleyConv):
    """The circular sandwich's [A B] per frequency (parameters: see CayleyConv)."""

    def extra_columns(self) -> int:
        """A's out_channels columns beside B's input ones."""
        return self.out_channels

    def _factors(self) -> tuple[Tensor, Tensor]:
        """(A, B), rows of unitary matrices: per frequency, A (F, out, out) and B (F, out, in_eff),
        or for a 1x1 kernel one real pair, A (out, out) and B (out, in_eff)."""
        q = cayley(normalized_response(self.weight, self.n, self.alpha))
        return q[..., : self.out_channels], q[..., self.out_channels :]


@register_layer("Sandwich", "conv")
class SandwichConv(_SandwichConvBase):
    """Convolutional sandwich layer with ReLU (circular, FFT): (b, in, N, N) -> (b, out, N/s, N/s)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """CayleyConv's arguments; adds `psi` (out,), zeros."""
        super().__init__(*args, **kwargs)
        dev, dt = self.weight.device, self.weight.dtype
        self.psi = nn.Parameter(torch.zeros(self.out_channels, device=dev, dtype=dt))

    def reparameterize(self) -> tuple[Tensor, Tensor]:
        a, b = self._factors()
        b_in = (SQRT2 * torch.exp(-self.psi))[:, None] * b  # sqrt2 Psi^-1 B
        a_out = a.mH * (SQRT2 * torch.exp(self.psi))[None, :]  # sqrt2 A^H Psi
        return a_out, b_in

    def forward(self, x: Tensor) -> Tensor:
        a_out, b_in = self.effective()
        z = self._enter_response(b_in, x, self.bias)
        # (z is this forward's own fresh tensor and nothing saved it for backward: relu in place
        # saves allocating, and page-faulting, another activation-sized buffer)
        return apply_response(a_out, F.relu(z, inplace=True), self.n, block=self._block(a_out))

    def lipschitz_bound(self) -> float:
        """|scale| * the sandwich inequality per frequency of the served real operators."""
        a_out, b_in = self.effective()
        m, n = hermitian_response(a_out, self.n), hermitian_response(b_in, self.n)
        return abs(self.scale) * sandwich_bound(m, n, self.psi)

    def export(self, circular: str = "dft") -> nn.Module:
        """[PixelUnshuffle] / circular conv B (scale folded in) / ReLU / circular conv A."""
        with torch.no_grad():
            a_out, b_in = (as_float64(t) for t in self.effective())
            b = circular_op(b_in, self.n, self.fft_in_channels, self.bias, self.scale, circular)
            a = circular_op(a_out, self.n, self.out_channels, None, 1.0, circular)
            psi = tuple(self.psi.double().tolist())
            return strided_op(self, SandwichCore(b, a, self.scale, psi))


class SandwichConvLin(_SandwichConvBase):
    """Convolutional sandwich without activation: y = 2 A^H B x + b per frequency."""

    def reparameterize(self) -> tuple[Tensor]:
        a, b = self._factors()
        return (2 * matmul(a.mH, b),)

    def forward(self, x: Tensor) -> Tensor:
        (m,) = self.effective()
        return self._enter_response(m, x, self.bias)

    def lipschitz_bound(self) -> float:
        """|scale| * max over frequencies of ||2 A(f)^H B(f)||_2 of the served real operator."""
        return abs(self.scale) * spectral_norm(hermitian_response(self.effective()[0], self.n))

    def export(self, circular: str = "dft") -> nn.Module:
        """[PixelUnshuffle] / one circular convolution 2 A^H B (scale folded in)."""
        with torch.no_grad():
            (m,) = (as_float64(t) for t in self.effective())
            return strided_op(self, circular_op(m, self.n, self.fft_in_channels, self.bias, self.scale, circular))

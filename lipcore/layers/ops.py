"""Standard-operator modules: what each layer's `export()` returns (lipcore.export writes them out).

Every module here runs only standard torch operators (Linear, Conv2d, ReLU, MatMul, ...), so ONNX and
torch.export take them as they are. They sit below the layers (torch and lipcore.layers.fourier only),
and the export pipeline (ONNX, torch.export, metadata: lipcore.export) above, so a layer writes
itself without importing anything that imports layers. Some keep the layer's parameters (`psi`,
`sll_t`, `schur_q`) beside the frozen weights so that lipcore.export_check can verify the bound of
the rounded module.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipcore.layers.fourier import apply_response


# ---- glue modules: only standard operators inside -----------------------------------------------
class Residual(nn.Module):
    """x - f(x): the SLL block's residual form (`sll_t`, `schur_q`: the block's t and SLL weights,
    for verifying the rounded block in lipcore.export_check)."""

    def __init__(self, f: nn.Module, t: tuple[float, ...] = (), q: tuple[float, ...] = ()) -> None:
        super().__init__()
        self.f = f
        self.sll_t, self.schur_q = tuple(t), tuple(q)

    def forward(self, x: Tensor) -> Tensor:
        return x - self.f(x)


class SLLFc(nn.Module):
    """x - (t * relu(x W^T + b)) W: one stored copy of W (Gemm, Relu, Mul, MatMul, Sub).
    `schur_q`: the layer's SLL weights, for verifying the rounded block (lipcore.export_check)."""

    t: Tensor

    def __init__(self, w: Tensor, b: Tensor, t: Tensor, q: tuple[float, ...] = ()) -> None:
        super().__init__()
        self.schur_q = tuple(q) or (1.0,) * len(t)
        self.weight = nn.Parameter(w.clone(), requires_grad=False)
        self.bias = nn.Parameter(b.clone(), requires_grad=False)
        self.register_buffer("t", t.clone())

    def forward(self, x: Tensor) -> Tensor:
        return x - (F.relu(F.linear(x, self.weight, self.bias)) * self.t) @ self.weight


class Mul(nn.Module):
    """x * c for a constant c (the sum-pool's factor after AvgPool2d)."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = float(c)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.c


class SandwichCore(nn.Module):
    """Linear/conv B, bias, ReLU, then linear/conv A (no bias): the sandwich layer's two halves.
    `scale` (folded into B) and `psi` are kept to verify the rounded halves (lipcore.export_check)."""

    def __init__(self, b: nn.Module, a: nn.Module, scale: float = 1.0, psi: tuple[float, ...] = ()) -> None:
        super().__init__()
        self.b, self.a = b, a
        self.scale, self.psi = float(scale), tuple(psi)

    def forward(self, x: Tensor) -> Tensor:
        return self.a(F.relu(self.b(x)))


def dft_matrices(n: int) -> dict[str, Tensor]:
    """The constant float64 matrices of `CircularDFT` on an n x n grid (half = n // 2 + 1 bins):
    "cw", "sw" (n, half): the rfft along W (real, imaginary part); "ch", "sh" (n, n): cos and sin of
    the DFT along H; "ar", "ai" (half, n): the inverse rfft along W, irfft's Hermitian weights and
    the 1 / n^2 of both inverse transforms folded in."""
    half = n // 2 + 1
    k = torch.arange(n, dtype=torch.float64)
    ang_w = 2 * math.pi * torch.outer(k, k[:half]) / n  # (n, half)
    ang_h = 2 * math.pi * torch.outer(k, k) / n  # (n, n)
    weights = torch.full((half,), 2.0, dtype=torch.float64)
    weights[0] = 1.0
    if n % 2 == 0:
        weights[-1] = 1.0
    return {
        "cw": torch.cos(ang_w),
        "sw": -torch.sin(ang_w),  # rfft along W: imaginary part
        "ch": torch.cos(ang_h),
        "sh": torch.sin(ang_h),
        "ar": weights[:, None] * torch.cos(ang_w.T) / n**2,
        "ai": -weights[:, None] * torch.sin(ang_w.T) / n**2,
    }


class CircularDFT(nn.Module):
    """A circular convolution as real matrix products: DFT, per-frequency channel mix, inverse DFT.

    x (b, c_in, n, n) -> (b, c_out, n, n). The 2-D rfft is two products with constant cos/sin
    matrices (along W to n // 2 + 1 bins, then along H), the layer's per-frequency complex maps
    (F, c_out, c_in) become one batched real MatMul pair per frequency, and the inverse is the same
    in reverse (irfft's Hermitian weights folded into its matrices). Only MatMul, Add, Sub, Mul,
    Reshape and Transpose: no DFT operator, no complex tensors, exact in exact arithmetic.
    """

    cw: Tensor
    sw: Tensor
    ch: Tensor
    sh: Tensor
    ar: Tensor
    ai: Tensor
    mr: Tensor
    mi: Tensor
    bias: Tensor | None

    def __init__(self, m: Tensor, n: int, bias: Tensor | None, scale: float = 1.0) -> None:
        super().__init__()
        half = n // 2 + 1
        m = scale * m.to(torch.complex128)
        f32 = lambda t: t.to(torch.float32).contiguous()  # noqa: E731
        for name, matrix in dft_matrices(n).items():
            self.register_buffer(name, f32(matrix))
        self.register_buffer("mr", f32(m.real.transpose(1, 2)))  # (F, in, out)
        self.register_buffer("mi", f32(m.imag.transpose(1, 2)))
        self.register_buffer("bias", None if bias is None else f32(bias.detach()).view(1, -1, 1, 1))
        # (not `self.half`: that is nn.Module's method)
        self.n, self.bins, self.c_in, self.c_out = n, half, m.shape[2], m.shape[1]

    def forward(self, x: Tensor) -> Tensor:
        n, half = self.n, self.bins
        xr, xi = x @ self.cw, x @ self.sw  # (b, c, n, half)
        yr = self.ch @ xr + self.sh @ xi  # full DFT along H: (cos - i sin)(xr + i xi)
        yi = self.ch @ xi - self.sh @ xr
        yr = yr.permute(2, 3, 0, 1).reshape(n * half, -1, self.c_in)  # (F, b, c_in), f = h * half + w
        yi = yi.permute(2, 3, 0, 1).reshape(n * half, -1, self.c_in)
        zr = yr @ self.mr - yi @ self.mi
        zi = yr @ self.mi + yi @ self.mr
        zr = zr.reshape(n, half, -1, self.c_out).permute(2, 3, 0, 1)  # (b, c_out, n, half)
        zi = zi.reshape(n, half, -1, self.c_out).permute(2, 3, 0, 1)
        ur = self.ch @ zr - self.sh @ zi  # inverse DFT along H (1/n folded into ar, ai)
        ui = self.ch @ zi + self.sh @ zr
        y = ur @ self.ar + ui @ self.ai  # inverse rfft along W
        return y if self.bias is None else y + self.bias


# ---- weights ------------------------------------------------------------------------------------
# Each layer's `export()` method writes itself with these builders.
def linear_op(w: Tensor, b: Tensor | None) -> nn.Linear:
    """nn.Linear holding copies of w (out, in) and b (out,) (no bias if None)."""
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        lin.weight.copy_(w)
        if b is not None:
            lin.bias.copy_(b)
    return lin


def conv_op(w: Tensor, b: Tensor | None, padding: int = 0, stride: int = 1) -> nn.Conv2d:
    """nn.Conv2d holding copies of w (out, in, kh, kw) and b (out,), zero padding."""
    conv = nn.Conv2d(
        w.shape[1], w.shape[0], (w.shape[2], w.shape[3]), stride=stride, padding=padding, bias=b is not None
    )
    with torch.no_grad():
        conv.weight.copy_(w)
        if b is not None and conv.bias is not None:
            conv.bias.copy_(b)
    return conv


def circular_kernel(m: Tensor, n: int, in_channels: int) -> Tensor:
    """The full n x n spatial kernel (c_out, c_in, n, n), real, of per-frequency maps m (F, o, i).

    The circular map x -> irfft2(m rfft2(x)) is applied to a unit impulse at pixel (0, 0) of each
    input channel; its response r_c is the kernel of a circular *convolution*. Conv2d cross-
    correlates, and with circular padding P = n // 2 before and n - 1 - P after, w[u, v] =
    r[(P - u) mod n, (P - v) mod n]. Computed in float64.
    """
    eye = torch.zeros(in_channels, in_channels, n, n, dtype=torch.float64)
    eye[torch.arange(in_channels), torch.arange(in_channels), 0, 0] = 1.0
    r = apply_response(m.to(torch.complex128), eye, n)  # (c_in, c_out, n, n): response to channel c
    r = r.transpose(0, 1)  # (c_out, c_in, n, n)
    p = n // 2
    idx = (p - torch.arange(n)) % n
    return r[:, :, idx][:, :, :, idx]


CIRCULAR_FORMS = ("dft", "conv")


def circular_op(
    m: Tensor, n: int, in_channels: int, bias: Tensor | None, scale: float = 1.0, form: str = "dft"
) -> nn.Module:
    """A circular convolution with per-frequency maps m (or one pointwise map, m.dim() == 2)."""
    if m.dim() == 2:  # 1x1: the same real matrix at every frequency
        return conv_op((scale * m.double())[:, :, None, None].float(), bias)
    if form == "dft":
        return CircularDFT(m, n, bias, scale)
    k = (scale * circular_kernel(m, n, in_channels)).float()
    p = n // 2
    return nn.Sequential(nn.CircularPad2d((p, n - 1 - p, p, n - 1 - p)), conv_op(k, bias))


def strided_op(layer: Any, inner: nn.Module) -> nn.Module:
    """`inner` after PixelUnshuffle(2) for a stride-2 FourierConv layer (its space-to-depth step)."""
    return nn.Sequential(nn.PixelUnshuffle(2), inner) if layer.stride == 2 else inner


def as_float64(t: Tensor) -> Tensor:
    """t detached in float64 (complex128 for complex t): exports fold scales in at this precision."""
    return t.detach().to(torch.complex128 if t.is_complex() else torch.float64)

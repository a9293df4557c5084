"""The Cayley transform: a free matrix to a (semi-)orthogonal one, real or complex, batched.

Shared by the sandwich and orthogonal layers (fully connected: one real matrix; convolutional: one
complex matrix per Fourier frequency).
"""

from __future__ import annotations

import torch
from torch import Tensor

_FULL = (torch.float32, torch.float64, torch.complex64, torch.complex128)


_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps")


def cayley(w: Tensor) -> Tensor:
    """Map `w` of shape (..., m, n) to Q of the same shape with orthonormal columns (m >= n) or rows.

    For a tall w = [U; V] (U: n x n, V: (m-n) x n), A = U - U^H + V^H V and
    Q = [(I + A)^-1 (I - A); -2 V (I + A)^-1]  (Trockman & Kolter, 2021). I + A is always
    invertible because its Hermitian part is I + V^H V > 0. A wide w is handled through its
    (plain, not conjugate) transpose, as in the reference implementation.
    """
    # (meta tensors, used to estimate memory, have no autocast state to ask about)
    if w.device.type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(w.device.type):
        # Reduced-precision autocast (bf16 training) must not reach the linear algebra: LU has no
        # bf16 kernels, and an orthogonal factor rounded to bf16 is no longer orthogonal.
        with torch.autocast(w.device.type, enabled=False):
            return cayley(w if w.dtype in _FULL else w.float())
    m, n = w.shape[-2], w.shape[-1]
    if n > m:
        return cayley(w.transpose(-2, -1)).transpose(-2, -1)
    u, v = w[..., :n, :], w[..., n:, :]
    eye = torch.eye(n, dtype=w.dtype, device=w.device)
    inv = inverse(eye + u - u.mH + matmul(v.mH, v))
    # (I + A)^-1 (I - A) = 2 (I + A)^-1 - I: one n x n product fewer per matrix (a third of the cost).
    # The factor -2 goes on the n x n inverse, not on the (m - n) x n product: bit-identical (a power
    # of two), and one pass over the tall block fewer forward and backward.
    return torch.cat((2 * inv - eye, matmul(v, -2 * inv)), dim=-2)


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for real or complex batches (..., m, k) @ (..., k, n); complex via ONE real matmul.

    PyTorch's CPU complex bmm (and its backward) loops over the batch, one small matmul and a few
    copies per matrix: with a Cayley transform per Fourier frequency that was most of a training
    step's aten ops. [Re a; Im a] @ [Re b, Im b] holds all four real products at once. On a GPU
    the complex bmm is one cuBLAS call, and the block form's extra copies made a KWL-Sandwich
    training step 1.35x slower (H200), so other devices keep the plain product.
    """
    if not (a.is_complex() or b.is_complex()) or a.device.type != "cpu":
        return a @ b
    m, n = a.shape[-2], b.shape[-1]
    p = torch.cat((a.real, a.imag), -2) @ torch.cat((b.real, b.imag), -1)
    return torch.complex(p[..., :m, :n] - p[..., m:, n:], p[..., :m, n:] + p[..., m:, :n])


def inverse(g: Tensor) -> Tensor:
    """torch.linalg.inv for real or complex batches (..., n, n); the complex backward in real matmuls.

    LAPACK's complex inverse is fast (measured 3.5x faster than the real 2n x 2n block form), but
    autograd's complex backward, -K^H G K^H, goes through the looping complex bmm (see `matmul`).
    Off the CPU, autograd's own backward is already batched.
    """
    if not g.is_complex() or g.device.type != "cpu":
        return _inv(g)
    return _ComplexInverse.apply(g)


def _inv(g: Tensor) -> Tensor:
    # (is_compiling first: torch.get_num_threads() would break a torch.compile graph)
    if torch.compiler.is_compiling() or g.device.type != "cpu" or g.shape[-1] > 512 or torch.get_num_threads() == 1:
        return torch.linalg.inv(g)
    # PyTorch's CPU batched inverse is a loop of LAPACK calls, one per matrix, and PyTorch runs MKL
    # with dynamic threading off, so each 32x32 call opens a parallel region of every thread: no
    # faster than one thread on an idle machine, and on a loaded one each region waits for a
    # descheduled thread (measured: 29 ms -> 0.8-1.6 s for 544 matrices of 32x32 on the shared
    # 2-core machine). A lone 512 x 512 inverse gains nothing from a second thread either (16 ms
    # both ways). One thread for these; the setting is per calling thread (OpenMP ICV and
    # mkl_set_num_threads_local) and is restored at once.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.inv(g)
    finally:
        torch.set_num_threads(threads)


class _ComplexInverse(torch.autograd.Function):
    @staticmethod
    def forward(g: Tensor) -> Tensor:  # type: ignore[override]
        return _inv(g)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (k,) = ctx.saved_tensors
        kh = k.mH
        return -matmul(kh, matmul(grad, kh))

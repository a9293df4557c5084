"""The Cayley transform: a free matrix to a (semi-)orthogonal one, real or complex, batched.

Shared by the sandwich and orthogonal layers (fully connected: one real matrix; convolutional: one
complex matrix per Fourier frequency).
"""

from __future__ import annotations

import torch
from torch import Tensor


def cayley(w: Tensor) -> Tensor:
    """Map `w` of shape (..., m, n) to Q of the same shape with orthonormal columns (m >= n) or rows.

    For a tall w = [U; V] (U: n x n, V: (m-n) x n), A = U - U^H + V^H V and
    Q = [(I + A)^-1 (I - A); -2 V (I + A)^-1]  (Trockman & Kolter, 2021). I + A is always
    invertible because its Hermitian part is I + V^H V > 0. A wide w is handled through its
    (plain, not conjugate) transpose, as in the reference implementation.
    """
    m, n = w.shape[-2], w.shape[-1]
    if n > m:
        return cayley(w.transpose(-2, -1)).transpose(-2, -1)
    u, v = w[..., :n, :], w[..., n:, :]
    eye = torch.eye(n, dtype=w.dtype, device=w.device)
    inv = torch.linalg.inv(eye + u - u.mH + v.mH @ v)
    # (I + A)^-1 (I - A) = 2 (I + A)^-1 - I: one n x n product fewer per matrix (a third of the cost)
    return torch.cat((2 * inv - eye, -2 * v @ inv), dim=-2)

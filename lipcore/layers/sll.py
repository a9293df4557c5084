"""SDP-based Lipschitz residual blocks, SLL (Araujo et al., ICLR 2023), a baseline of the paper.

y = x - 2 W^T T relu(W x + b) with T = diag(2 / sum_j |W W^T|_ij q_j / q_i) is 1-Lipschitz for any
nonzero q. Parameters: `weights` (inner, features) or `kernel` (inner, channels, k, k), `bias`
(inner), `q` (inner).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipcore.layers.init import xavier_
from lipcore.layers.reparam import Reparameterized


def _clamp_tiny(t: Tensor) -> Tensor:
    return t.clamp_min(torch.finfo(t.dtype).tiny)


class SLLBlockFc(Reparameterized):
    """Fully connected SLL block: (batch, features) -> (batch, features), 1-Lipschitz."""

    def __init__(
        self, features: int, inner: int, epsilon: float = 1e-6, reference_epsilon: bool = False,
        device=None, dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.features, self.inner, self.epsilon = features, inner, epsilon
        self.reference_epsilon = reference_epsilon
        self.weights = nn.Parameter(torch.empty(inner, features, **kw))
        self.bias = nn.Parameter(torch.empty(inner, **kw))
        self.q = nn.Parameter(torch.rand(inner, **kw))
        xavier_(self.weights, self.bias)

    def reparameterize(self) -> tuple[Tensor]:
        w = self.weights
        q = self.q.abs()
        gram = (w @ w.T).abs()
        if self.reference_epsilon:
            # The published code: epsilon on 1/q_i only. T_i is then too large by (q_i + eps) / q_i,
            # and the block's Lipschitz constant can reach 1 + 2 eps / q_i (one neuron shows it).
            # Kept only to reproduce the reference numbers.
            return (2 * (q + self.epsilon) / _clamp_tiny((gram * q[None, :]).sum(1)),)
        # The same epsilon in every q_j keeps T an exact instance of the SLL bound.
        qe = q + self.epsilon
        return (2 * qe / _clamp_tiny((gram * qe[None, :]).sum(1)),)

    def forward(self, x: Tensor) -> Tensor:
        (t,) = self.effective()
        res = F.relu(F.linear(x, self.weights, self.bias))
        return x - F.linear(t * res, self.weights.T)

    def extra_repr(self) -> str:
        return f"features={self.features}, inner={self.inner}"


class SLLBlockConv(Reparameterized):
    """Convolutional SLL block, zero padding k // 2: (b, channels, H, W) -> same shape, 1-Lipschitz."""

    def __init__(self, channels: int, inner: int, kernel_size: int = 3, device=None, dtype=None) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"SLLBlockConv needs an odd kernel_size for 'same' padding, got {kernel_size}")
        kw = {"device": device, "dtype": dtype}
        self.channels, self.inner, self.padding = channels, inner, kernel_size // 2
        self.kernel = nn.Parameter(torch.empty(inner, channels, kernel_size, kernel_size, **kw))
        self.bias = nn.Parameter(torch.empty(inner, **kw))
        self.q = nn.Parameter(torch.randn(inner, **kw))
        xavier_(self.kernel, self.bias)

    def reparameterize(self) -> tuple[Tensor]:
        k = self.kernel
        kkt = F.conv2d(k, k, padding=k.shape[-1] - 1)  # (inner, inner, 2k-1, 2k-1)
        q = self.q.abs()
        # 2 / (sum_j |q_j kkt_ij| / q_i), written without dividing by q_i (q_i = 0 gives T_i = 0).
        return (2 * q / _clamp_tiny((q[None, :, None, None] * kkt).abs().sum((1, 2, 3))),)

    def forward(self, x: Tensor) -> Tensor:
        (t,) = self.effective()
        res = F.relu(F.conv2d(x, self.kernel, self.bias, padding=self.padding))
        return x - F.conv_transpose2d(t[None, :, None, None] * res, self.kernel, padding=self.padding)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, inner={self.inner}, kernel_size={self.kernel.shape[-1]}"

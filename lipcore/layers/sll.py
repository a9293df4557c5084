"""SDP-based Lipschitz residual blocks, SLL (Araujo et al., ICLR 2023), a baseline of the paper.

y = x - W^T diag(t) relu(W x + b) with t_i = 2 / (sum_j |W W^T|_ij q_j / q_i) is 1-Lipschitz for
any nonzero q (t = 2 T^-1 in the notation of Araujo et al.). Parameters: `weights` (inner,
features) or `kernel` (inner, channels, k, k), `bias` (inner), `q` (inner).

The forward takes W, b and t all from `effective()`, one reparameterisation, never the live
parameters beside a cached t. Underflow: the block is unchanged when (W, b) is divided by any
s > 0 (t scales by s^2) and when q is scaled, so the effective tensors are (W / s, b / s, t) with
s = max|W| and q / max q; Gram sums too small to be trusted (products flushed to zero could make
t too large) give t_i = 0, which keeps the SLL condition (a smaller t always does). Weights at 1e-30
or exactly 0 thus give a 1-Lipschitz block (exactly 0: the identity), never a blown-up t.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipcore.catalog.layer_families import register_layer
from lipcore.layers.aol import underflow_floor
from lipcore.layers.bounds import sll_bound, sll_gram_sums
from lipcore.layers.init import xavier_
from lipcore.layers.ops import Residual, SLLFc, as_float64, conv_op
from lipcore.layers.reparam import Reparameterized


def _normalized(w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(w / s, b / s) with s = max|w| detached; a zero (or denormal) w gives (0, b)."""
    s = w.detach().abs().amax()
    ok = s >= torch.finfo(w.dtype).tiny
    s1 = torch.where(ok, s, torch.ones_like(s))
    return torch.where(ok, w / s1, torch.zeros_like(w)), torch.where(ok, b / s1, b)


def _unit_max(q: Tensor) -> Tensor:
    """q / max q (detached) for q >= 0; all-zero q stays zero."""
    m = q.detach().amax()
    return q / torch.where(m > 0, m, torch.ones_like(m))


def _safe_t(num: Tensor, den: Tensor, terms: int) -> Tensor:
    """num / den where den is a trustworthy sum of `terms` products (entries <= 1), else 0."""
    ok = den > underflow_floor(den.dtype, terms)
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))


class SLLBlockFc(Reparameterized):
    """Fully connected SLL block: (batch, features) -> (batch, features), 1-Lipschitz."""

    def __init__(
        self,
        features: int,
        inner: int,
        epsilon: float = 1e-6,
        reference_epsilon: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.features, self.inner, self.epsilon = features, inner, epsilon
        self.reference_epsilon = reference_epsilon
        self.weights = nn.Parameter(torch.empty(inner, features, **kw))
        self.bias = nn.Parameter(torch.empty(inner, **kw))
        self.q = nn.Parameter(torch.rand(inner, **kw))
        xavier_(self.weights, self.bias)
        self._gram_sums: tuple[Any, Any, tuple[Tensor, Tensor]] | None = None

    def reparameterize(self) -> tuple[Tensor, Tensor, Tensor]:
        """(W / s, b / s, t): the weights, bias and diagonal the forward applies."""
        w, b = _normalized(self.weights, self.bias)
        q = self.q.abs()
        gram = (w @ w.T).abs()
        terms = w.shape[0] * w.shape[1]
        if self.reference_epsilon:
            # The published code: epsilon on 1/q_i only. T_i is then too large by (q_i + eps) / q_i,
            # and the block's Lipschitz constant can reach 1 + 2 eps / q_i (one neuron shows it).
            # Kept only to reproduce the reference numbers.
            qmax = q.detach().amax().clamp_min(1.0)
            t = _safe_t(2 * (q + self.epsilon) / qmax, (gram * (q / qmax)[None, :]).sum(1), terms)
        else:
            # The same epsilon in every q_j keeps t an exact instance of the SLL bound.
            qe = _unit_max(q + self.epsilon)
            t = _safe_t(2 * qe, (gram * qe[None, :]).sum(1), terms)
        if not self.training and w.dtype == torch.float64 and not torch.is_grad_enabled():
            self._keep_gram_sums(w, t, gram)
        return w, b, t

    def _check_q(self) -> Tensor:
        """The Schur weights of the float64 check: |q| plus the epsilon t was built with."""
        return self.q.detach().abs() + (0.0 if self.reference_epsilon else self.epsilon)

    def _keep_gram_sums(self, w: Tensor, t: Tensor, gram: Tensor) -> None:
        """Keep the check's Gram sums of this float64 eval reparameterisation (a certified copy's),
        made from the very |W W^T| that gave t: the bound's own W W^T, the same float64 product of
        the same tensor, cost as much again (seconds per 2048 x 2880 block). Weak references to
        (w, t) tie them to the tensors `effective()` serves, so they are used only for those."""
        self._gram_sums = (weakref.ref(w), weakref.ref(t), sll_gram_sums(gram, t, self._check_q()))

    def _kept_gram_sums(self, w: Tensor, t: Tensor) -> tuple[Tensor, Tensor] | None:
        kept = getattr(self, "_gram_sums", None)
        if kept is None or kept[0]() is not w or kept[1]() is not t:
            return None
        return kept[2]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_gram_sums"] = None  # weak references neither pickle nor belong to a copy
        return state

    def forward(self, x: Tensor) -> Tensor:
        w, b, t = self.effective()
        res = F.relu(F.linear(x, w, b))
        return x - F.linear(t * res, w.T)

    def lipschitz_bound(self) -> float:
        """SLL's condition checked on the served (W, t) in float64; see bounds.sll_bound."""
        w, _, t = self.effective()
        return sll_bound(w, t, self._check_q(), conv=False, sums=self._kept_gram_sums(w, t))

    def export(self, circular: str = "dft") -> nn.Module:
        """x - T relu(x W^T + b) W with the W, b and t of one reparameterisation (lipcore.layers.ops.SLLFc)."""
        with torch.no_grad():
            w, b, t = self.effective()
            q = self.q.detach().double().abs() + (0.0 if self.reference_epsilon else self.epsilon)
            return SLLFc(w.detach().float(), b.detach().float(), t.detach().float(), tuple(q.tolist()))

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

    def reparameterize(self) -> tuple[Tensor, Tensor, Tensor]:
        """(K / s, b / s, t): the kernel, bias and diagonal the forward applies."""
        k, b = _normalized(self.kernel, self.bias)
        kkt = F.conv2d(k, k, padding=k.shape[-1] - 1)  # (inner, inner, 2k-1, 2k-1)
        q = _unit_max(self.q.abs())
        terms = k.shape[1] * k.shape[2] * k.shape[3] * kkt.shape[1] * kkt.shape[2] * kkt.shape[3]
        # 2 / (sum_j |q_j kkt_ij| / q_i), written without dividing by q_i (q_i = 0 gives t_i = 0).
        return k, b, _safe_t(2 * q, (q[None, :, None, None] * kkt).abs().sum((1, 2, 3)), terms)

    def forward(self, x: Tensor) -> Tensor:
        k, b, t = self.effective()
        res = F.relu(F.conv2d(x, k, b, padding=self.padding))
        return x - F.conv_transpose2d(t[None, :, None, None] * res, k, padding=self.padding)

    def lipschitz_bound(self) -> float:
        """SLL's condition checked on the served (K, t) in float64; see bounds.sll_bound."""
        k, _, t = self.effective()
        return sll_bound(k, t, self.q.detach().abs(), conv=True)

    def export(self, circular: str = "dft") -> nn.Module:
        """x - ConvTranspose2d(T relu(Conv2d(x))) with the K, b and t of one reparameterisation."""
        with torch.no_grad():
            k, b, t = (as_float64(v) for v in self.effective())
            inner, channels, ks = k.shape[0], k.shape[1], k.shape[-1]
            up = nn.ConvTranspose2d(inner, channels, ks, padding=self.padding, bias=False)
            up.weight.copy_((k * t[:, None, None, None]).float())
            branch = nn.Sequential(conv_op(k.float(), b.float(), self.padding), nn.ReLU(), up)
            return Residual(branch, tuple(t.tolist()), tuple(self.q.detach().double().abs().tolist()))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, inner={self.inner}, kernel_size={self.kernel.shape[-1]}"


@register_layer("SLL", "toy")
def sll_toy_body(in_features: int, out_features: int, *, width: int, depth: int, scale: float) -> list[nn.Module]:
    """The SLL family's Toy body: zero-pad to `width`, `depth - 2` SLLBlockFc, read out the first
    `out_features` (SLL blocks keep their width, so they cannot be the first and last layer)."""
    from lipcore.layers.channels import FirstChannel, PaddingFeatures

    mods: list[nn.Module] = [PaddingFeatures(in_features, width, scale=scale)]
    mods += [SLLBlockFc(width, width) for _ in range(depth - 2)]
    mods.append(FirstChannel(out_features, scale=scale))
    return mods

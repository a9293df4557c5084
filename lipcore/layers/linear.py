"""Fully connected layers of one reparameterised weight: y = W (scale x) + b [then ReLU].

The AOL and orthogonal (Cayley) fully connected layers differ only in how `reparameterize()` makes
W from their free parameters; forward, bound, export and repr are these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipcore.layers.bounds import spectral_norm
from lipcore.layers.ops import as_float64, linear_op
from lipcore.layers.reparam import Reparameterized


class ScaledLinear(Reparameterized):
    """(batch, in) -> (batch, out): W (scale x) + b, then ReLU if `activation`; W is
    `reparameterize()[0]` (out, in) and `bias` (out,) a parameter the subclass creates."""

    activation: bool = False
    bias: nn.Parameter

    def __init__(self, in_features: int, out_features: int, scale: float) -> None:
        super().__init__()
        self.in_features, self.out_features, self.scale = in_features, out_features, float(scale)

    def forward(self, x: Tensor) -> Tensor:
        (w,) = self.effective()
        y = F.linear(self.scale * x, w, self.bias)
        return F.relu(y) if self.activation else y

    def lipschitz_bound(self) -> float:
        """|scale| * ||W||_2 (exact SVD in float64 of the served weight)."""
        return abs(self.scale) * spectral_norm(self.effective()[0])

    def export(self, circular: str = "dft") -> nn.Module:
        """Linear(scale W, b) [/ ReLU]."""
        with torch.no_grad():
            (w,) = self.effective()
            lin = linear_op((self.scale * as_float64(w)).float(), self.bias)
            return nn.Sequential(lin, nn.ReLU()) if self.activation else lin

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale:g}"

"""Last-layer normalisation, LLN (Singla et al., 2022): logits from unit-norm weight rows.

With unit rows w_i, the logit gap f_i - f_j is ||w_i - w_j||-Lipschitz in the layer input, which
gives a tighter certificate than the generic sqrt(2) (see lipcore.certify).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipcore.layers.bounds import spectral_norm
from lipcore.layers.init import torch_default_
from lipcore.layers.ops import Mul, as_float64, linear_op
from lipcore.layers.reparam import Reparameterized


class LinearNormalized(Reparameterized):
    """y = normalize_rows(W) (scale x) + b: (batch, in) -> (batch, out)."""

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.scale = in_features, out_features, float(scale)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw))
        torch_default_(self.weight, self.bias)

    def reparameterize(self) -> tuple[Tensor]:
        return (F.normalize(self.weight, p=2, dim=1),)

    def normalized_weight(self) -> Tensor:
        """The unit-norm rows actually applied, (out, in)."""
        return self.effective()[0]

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.scale * x, self.normalized_weight(), self.bias)

    def lipschitz_bound(self) -> float:
        """|scale| * ||W||_2 of the whole head (certificates use the sharper pair distances instead)."""
        return abs(self.scale) * spectral_norm(self.effective()[0])

    def export(self, circular: str = "dft") -> nn.Module:
        """[x * scale /] Linear(unit rows, b): the rows stay separate from the scale, so the file's
        rows are the ones its certificate's pair distances are measured on (lipcore.export)."""
        with torch.no_grad():
            (w,) = self.effective()
            head = linear_op(as_float64(w).float(), self.bias)
            return head if self.scale == 1.0 else nn.Sequential(Mul(self.scale), head)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale:g}"

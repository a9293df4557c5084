"""Training losses of the paper: offset cross-entropy, multi-class hinge, mean squared error."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from lipcore.spec import ExperimentSpec


class Xent(nn.Module):
    """Cross-entropy of logits with sqrt(2) * offset subtracted from the true class, at temperature T.

    loss = T * CE((logits - sqrt2 * offset * onehot(y)) / T, y). The offset asks for a logit margin
    of sqrt(2) * offset, i.e. a certified radius of offset / gamma (Araujo et al., 2023).
    """

    def __init__(self, num_classes: int, offset: float = 1.5, temperature: float = 0.25) -> None:
        super().__init__()
        self.num_classes, self.offset, self.temperature = num_classes, math.sqrt(2) * offset, temperature

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        onehot = F.one_hot(labels, num_classes=self.num_classes).to(logits.dtype)
        shifted = (logits - self.offset * onehot) / self.temperature
        return F.cross_entropy(shifted, labels) * self.temperature


class MultiMargin(nn.Module):
    """Multi-class hinge loss with margin 0.5 (torch's multi_margin_loss)."""

    def __init__(self, margin: float = 0.5) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.multi_margin_loss(logits, labels, margin=self.margin)


def build_loss(spec: ExperimentSpec) -> Callable[[Tensor, Tensor], Tensor]:
    """The criterion of `spec`: (outputs, targets) -> scalar loss."""
    if spec.loss == "mse":
        return F.mse_loss
    if spec.loss == "xent":
        if spec.num_classes is None:
            raise ValueError("xent needs the number of classes; resolve the spec against its data first")
        return Xent(spec.num_classes, offset=spec.offset if spec.offset is not None else 1.5)
    if spec.loss == "multimargin":
        return MultiMargin()
    raise ValueError(f"unknown loss {spec.loss!r}; expected xent, multimargin or mse")

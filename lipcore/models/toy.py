"""Toy: the 1-D regression network of Table 1 (fit a square wave), 10 layers deep.

Widths are the family's `toy_width` (the paper's: 86 for Sandwich, whose layers carry in+out
columns, 128 otherwise), so all families have about the same number of parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from lipcore.catalog.layer_families import LayerFamily, get_family
from lipcore.models.base import LipschitzNet
from lipcore.models.registry import register_model

if TYPE_CHECKING:
    from lipcore.spec import ExperimentSpec

DEPTH = 10  # layers (SLL: 8 residual blocks between a padding and a read-out)


class Toy(LipschitzNet):
    """(b, in_features) -> (b, out_features), DEPTH layers of one family (a name or a record):
    the family's own Toy body if it has one, else fc(in, w), DEPTH - 2 fc(w, w) and lin(w, out)."""

    def __init__(
        self,
        layer: str | LayerFamily,
        gamma: float | None,
        in_features: int = 1,
        out_features: int = 1,
    ) -> None:
        family = get_family(layer)
        if "toy" not in family.capabilities:
            raise ValueError(f"Toy needs fc and lin layers or a toy body; family {family.name!r} has neither")
        super().__init__(gamma if family.bounded else None)
        g, w, hidden = self.sqrt_gamma, family.toy_width, DEPTH - 2
        if "toy" in family.kinds:
            mods: list[nn.Module] = list(
                family.constructor("toy")(in_features, out_features, width=w, depth=DEPTH, scale=g)
            )
        else:
            fc, lin = family.constructor("fc"), family.constructor("lin")
            act = family.constructor("activation") if "activation" in family.kinds else None
            mods = []
            for i in range(hidden + 1):
                mods.append(fc(in_features, w, scale=g) if i == 0 else fc(w, w))
                if act is not None:
                    mods.append(act())
            mods.append(lin(w, out_features, scale=g))
        self.layer, self.family = family.name, family
        self.body = nn.Sequential(*mods)


@register_model("Toy")
def toy(spec: ExperimentSpec) -> Toy:
    """Toy of `spec` (layer, gamma; one input feature and one output for square_wave)."""
    return Toy(spec.layer or "Plain", spec.gamma, spec.in_channels or 1, spec.num_classes or 1)

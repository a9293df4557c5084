"""Toy: the 1-D regression network of Table 1 (fit a square wave), 10 layers deep.

Widths are the paper's: 86 for Sandwich (its layers carry in+out columns), 128 otherwise, so all
families have about the same number of parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from lipcore.layers import (
    AolFc, AolLin, FirstChannel, OrthogonFc, OrthogonLin, PaddingFeatures, SandwichFc, SandwichLin,
    SLLBlockFc,
)
from lipcore.models.base import LipschitzNet
from lipcore.models.registry import register_model

if TYPE_CHECKING:
    from lipcore.spec import ExperimentSpec

DEPTH = 10  # layers (SLL: 8 residual blocks between a padding and a read-out)


class Toy(LipschitzNet):
    def __init__(self, layer: str, gamma: float | None, in_features: int = 1, out_features: int = 1) -> None:
        super().__init__(None if layer == "Plain" else gamma)
        g, hidden = self.sqrt_gamma, DEPTH - 2
        if layer == "Plain":
            w = 128
            mods: list[nn.Module] = [nn.Linear(in_features, w), nn.ReLU()]
            for _ in range(hidden):
                mods += [nn.Linear(w, w), nn.ReLU()]
            mods.append(nn.Linear(w, out_features))
        elif layer == "SLL":
            w = 128
            mods = [PaddingFeatures(in_features, w, scale=g)]
            mods += [SLLBlockFc(w, w) for _ in range(hidden)]
            mods.append(FirstChannel(out_features, scale=g))
        else:
            fc, lin, w = {
                "Sandwich": (SandwichFc, SandwichLin, 86),
                "Orthogon": (OrthogonFc, OrthogonLin, 128),
                "Aol": (AolFc, AolLin, 128),
            }[layer]
            mods = [fc(in_features, w, scale=g)]
            mods += [fc(w, w) for _ in range(hidden)]
            mods.append(lin(w, out_features, scale=g))
        self.layer = layer
        self.body = nn.Sequential(*mods)


@register_model("Toy")
def toy(spec: ExperimentSpec) -> Toy:
    return Toy(spec.layer or "Plain", spec.gamma, spec.in_channels or 1, spec.num_classes or 1)

"""KWL: the 4-conv + 3-linear network of Fig. 4 and Table 2 (after Kolter & Wong / Li et al.).

Widths 1/2/4 for small/medium/large. Sandwich and Orthogon downsample with stride-2 (space-to-depth)
circular convolutions; AOL keeps full resolution and sum-pools 4x4 at the end (divided by 4, which
is norm 1); Plain uses ordinary strided convolutions and has no bound.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from lipcore.layers import (
    AolConv, AolFc, AolLin, OrthogonConv, OrthogonFc, OrthogonLin, PlainConv, SandwichConv,
    SandwichFc, SandwichLin,
)
from lipcore.models.base import LipschitzNet
from lipcore.models.registry import register_model

if TYPE_CHECKING:
    from lipcore.spec import ExperimentSpec

WIDTHS = {"small": 1, "medium": 2, "large": 4}


class KWL(LipschitzNet):
    def __init__(
        self, layer: str, width: int, gamma: float | None, in_channels: int = 3, img_size: int = 32,
        num_classes: int = 10,
    ) -> None:
        super().__init__(None if layer == "Plain" else gamma)
        if img_size % 4:
            raise ValueError(f"KWL needs an image size divisible by 4, got {img_size}")
        g, w, s, c = self.sqrt_gamma, width, img_size, in_channels
        flat = 64 * w * (s // 4) ** 2
        if layer == "Plain":
            mods: list[nn.Module] = [
                PlainConv(c, 32 * w, 3), nn.ReLU(),
                PlainConv(32 * w, 32 * w, 3, stride=2), nn.ReLU(),
                PlainConv(32 * w, 64 * w, 3), nn.ReLU(),
                PlainConv(64 * w, 64 * w, 3, stride=2), nn.ReLU(),
                nn.Flatten(),
                nn.Linear(flat, 640 * w), nn.ReLU(),
                nn.Linear(640 * w, 512 * w), nn.ReLU(),
                nn.Linear(512 * w, num_classes),
            ]
        elif layer == "Aol":
            mods = [
                AolConv(c, 32 * w, 3, scale=g),
                AolConv(32 * w, 32 * w, 3),
                AolConv(32 * w, 64 * w, 3),
                AolConv(64 * w, 64 * w, 3),
                nn.AvgPool2d(4, divisor_override=4),
                nn.Flatten(),
                AolFc(flat, 640 * w),
                AolFc(640 * w, 512 * w),
                AolLin(512 * w, num_classes, scale=g),
            ]
        elif layer in ("Sandwich", "Orthogon"):
            conv, fc, lin = (
                (SandwichConv, SandwichFc, SandwichLin) if layer == "Sandwich"
                else (OrthogonConv, OrthogonFc, OrthogonLin)
            )
            # The sandwich layer's extra A block lets it match Orthogon's size with 512 hidden units.
            hidden = 512 * w if layer == "Sandwich" else 640 * w
            mods = [
                conv(c, 32 * w, 3, scale=g, input_size=s),
                conv(32 * w, 32 * w, 3, stride=2, input_size=s),
                conv(32 * w, 64 * w, 3, input_size=s // 2),
                conv(64 * w, 64 * w, 3, stride=2, input_size=s // 2),
                nn.Flatten(),
                fc(flat, hidden),
                fc(hidden, 512 * w),
                lin(512 * w, num_classes, scale=g),
            ]
        else:
            raise ValueError(f"KWL is defined for Sandwich, Orthogon, Aol and Plain layers, not {layer!r}")
        self.layer, self.width = layer, width
        self.body = nn.Sequential(*mods)


@register_model("KWL")
def kwl(spec: ExperimentSpec) -> KWL:
    return KWL(
        spec.layer or "Plain", WIDTHS[spec.scale or "small"], spec.gamma, spec.in_channels or 3,
        spec.img_size or 32, spec.num_classes or 10,
    )

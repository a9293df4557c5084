"""KWL: the 4-conv + 3-linear network of Fig. 4 and Table 2 (after Kolter & Wong / Li et al.).

Widths 1/2/4 for small/medium/large. Sandwich and Orthogon downsample with stride-2 (space-to-depth)
circular convolutions; AOL keeps full resolution and sum-pools 4x4 at the end (divided by 4, which
is norm 1); Plain uses ordinary strided convolutions and has no bound. The family record
(lipcore.catalog.layer_families) says which: models never branch on a family's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from lipcore.catalog.layer_families import LayerFamily, get_family
from lipcore.models.base import LipschitzNet
from lipcore.models.registry import register_model

if TYPE_CHECKING:
    from lipcore.spec import ExperimentSpec

WIDTHS = {"small": 1, "medium": 2, "large": 4}


class KWL(LipschitzNet):
    """(b, c, s, s) images -> (b, num_classes) logits, from one layer family (a name or a record):
    4 convolutions (32w, 32w, 64w, 64w channels, two halvings of the resolution), then FC layers of
    `family.kwl_hidden * w` and 512w units and a linear read-out; sqrt(gamma) on the first and last."""

    def __init__(
        self,
        layer: str | LayerFamily,
        width: int,
        gamma: float | None,
        in_channels: int = 3,
        img_size: int = 32,
        num_classes: int = 10,
    ) -> None:
        family = get_family(layer)
        missing = {"conv", "fc", "lin"} - family.capabilities
        if missing:
            raise ValueError(f"KWL needs conv, fc and lin layers; family {family.name!r} lacks {sorted(missing)}")
        super().__init__(gamma if family.bounded else None)
        if img_size % 4:
            raise ValueError(f"KWL needs an image size divisible by 4, got {img_size}")
        g, w, s, c = self.sqrt_gamma, width, img_size, in_channels
        conv, fc, lin = (family.constructor(k) for k in ("conv", "fc", "lin"))
        act = family.constructor("activation") if "activation" in family.kinds else None

        def with_act(m: nn.Module) -> list[nn.Module]:
            return [m, act()] if act is not None else [m]

        flat, hidden = 64 * w * (s // 4) ** 2, family.kwl_hidden * w
        if family.downsample == "pool":
            # full resolution throughout, then a 4x4 sum-pool / 4 (norm 1)
            strides, sizes, tail = (1, 1, 1, 1), (s, s, s, s), [nn.AvgPool2d(4, divisor_override=4)]
        else:
            strides, sizes, tail = (1, 2, 1, 2), (s, s, s // 2, s // 2), []
        channels = (c, 32 * w, 32 * w, 64 * w, 64 * w)
        mods: list[nn.Module] = []
        for i in range(4):
            mods += with_act(
                conv(
                    channels[i],
                    channels[i + 1],
                    3,
                    stride=strides[i],
                    scale=g if i == 0 else 1.0,
                    input_size=sizes[i],
                )
            )
        mods += [*tail, nn.Flatten()]
        mods += with_act(fc(flat, hidden)) + with_act(fc(hidden, 512 * w))
        mods.append(lin(512 * w, num_classes, scale=g))
        self.layer, self.family, self.width = family.name, family, width
        self.body = nn.Sequential(*mods)


@register_model("KWL")
def kwl(spec: ExperimentSpec) -> KWL:
    """KWL of `spec` (layer, scale -> width, gamma, input shape and classes)."""
    return KWL(
        spec.layer or "Plain",
        WIDTHS[spec.scale or "small"],
        spec.gamma,
        spec.in_channels or 3,
        spec.img_size or 32,
        spec.num_classes or 10,
    )

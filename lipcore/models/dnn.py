"""DNN: the deeper all-sandwich network of Tables 3-4 (certified accuracy), with an LLN head.

32x32 inputs: 6 sandwich convolutions (3 of stride 2); 64x64: 8 (4 of stride 2); then three
sandwich FC layers (2048, 2048, 1024) and, with LLN, a LinearNormalized read-out. The second
sqrt(gamma) sits on the last sandwich layer before LLN, so the certificate is margin over
(gamma * ||w_i - w_j||).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from lipcore.catalog.layer_families import LayerFamily, get_family
from lipcore.layers.normalized import LinearNormalized
from lipcore.models.base import LipschitzNet
from lipcore.models.registry import register_model

if TYPE_CHECKING:
    from lipcore.spec import ExperimentSpec


class DNN(LipschitzNet):
    """(b, c, s, s) images -> (b, num_classes) logits; the paper's DNN is all-sandwich (`layer`)."""

    def __init__(
        self,
        gamma: float,
        in_channels: int = 3,
        img_size: int = 32,
        num_classes: int = 100,
        lln: bool = True,
        layer: str | LayerFamily = "Sandwich",
    ) -> None:
        family = get_family(layer)
        super().__init__(gamma if family.bounded else None)
        conv, fc, lin = (family.constructor(k) for k in ("conv", "fc", "lin"))
        stages = {32: (64, 128, 256), 64: (64, 128, 256, 512)}.get(img_size)
        if stages is None:
            raise ValueError(f"DNN is defined for 32x32 and 64x64 inputs, got {img_size}x{img_size}")
        g = self.sqrt_gamma
        mods: list[nn.Module] = []
        c, s = in_channels, img_size
        for i, width in enumerate(stages):
            mods.append(conv(c, width, 3, scale=g if i == 0 else 1.0, input_size=s))
            mods.append(conv(width, width, 3, stride=2, input_size=s))
            c, s = width, s // 2
        mods += [nn.Flatten(), fc(c * s * s, 2048), fc(2048, 2048)]
        if lln:
            mods += [fc(2048, 1024, scale=g), LinearNormalized(1024, num_classes)]
        else:
            mods += [fc(2048, 1024), lin(1024, num_classes, scale=g)]
        self.body = nn.Sequential(*mods)


@register_model("DNN")
def dnn(spec: ExperimentSpec) -> DNN:
    assert spec.gamma is not None
    return DNN(
        spec.gamma,
        spec.in_channels or 3,
        spec.img_size or 32,
        spec.num_classes or 100,
        spec.lln,
        spec.layer or "Sandwich",
    )

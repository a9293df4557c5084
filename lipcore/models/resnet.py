"""Resnet-SLL: the SLL network of Araujo et al. (2023) as configured in the paper's baselines.

Channels are zero-padded up to `n_channels` (times sqrt(gamma)), followed by `depth_conv` SLL
convolution blocks, a 4x4 sum-pool / 4 (norm 1), `depth_linear` SLL linear blocks and a read-out of
the first `num_classes` features (times sqrt(gamma)), or an LLN head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from lipcore.layers import FirstChannel, LinearNormalized, PaddingChannels, SLLBlockConv, SLLBlockFc
from lipcore.models.base import LipschitzNet
from lipcore.models.registry import register_model

if TYPE_CHECKING:
    from lipcore.spec import ExperimentSpec


@dataclass(frozen=True)
class ResnetConfig:
    depth_conv: int
    n_channels: int
    conv_size: int  # inner channels of each SLL conv block
    depth_linear: int
    n_features: int  # inner features of each SLL linear block


CONFIGS = {
    "small": ResnetConfig(20, 45, 5, 7, 2048),
    "medium": ResnetConfig(30, 60, 5, 10, 2048),
    "large": ResnetConfig(90, 60, 5, 15, 2048),
    "xlarge": ResnetConfig(120, 70, 5, 15, 4096),
}


class Resnet(LipschitzNet):
    def __init__(
        self,
        config: ResnetConfig,
        gamma: float,
        in_channels: int = 3,
        img_size: int = 32,
        num_classes: int = 10,
        lln: bool = False,
    ) -> None:
        super().__init__(gamma)
        if img_size % 4:
            raise ValueError(f"Resnet needs an image size divisible by 4, got {img_size}")
        g, cfg = self.sqrt_gamma, config
        features = cfg.n_channels * (img_size // 4) ** 2
        mods: list[nn.Module] = [PaddingChannels(in_channels, cfg.n_channels, scale=g)]
        mods += [SLLBlockConv(cfg.n_channels, cfg.conv_size, 3) for _ in range(cfg.depth_conv)]
        mods += [nn.AvgPool2d(4, divisor_override=4), nn.Flatten()]
        mods += [SLLBlockFc(features, cfg.n_features) for _ in range(cfg.depth_linear)]
        if lln:
            mods.append(LinearNormalized(features, num_classes, scale=g))
        else:
            mods.append(FirstChannel(num_classes, scale=g))
        self.config = cfg
        self.body = nn.Sequential(*mods)


@register_model("Resnet")
def resnet(spec: ExperimentSpec) -> Resnet:
    assert spec.gamma is not None
    return Resnet(
        CONFIGS[spec.scale or "xlarge"],
        spec.gamma,
        spec.in_channels or 3,
        spec.img_size or 32,
        spec.num_classes or 10,
        spec.lln,
    )

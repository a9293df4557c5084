"""Unconstrained layers of the paper's `Plain` baseline (no Lipschitz bound)."""

from __future__ import annotations

import torch
from torch import nn

from lipcore.catalog.layer_families import register_layer
from lipcore.layers.ops import conv_op


class PlainConv(nn.Conv2d):
    """nn.Conv2d with zero 'same' padding (k - 1) // 2, as the reference `PlainConv` for odd kernels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2,
            bias=bias,
            device=device,
            dtype=dtype,
        )

    def export(self, circular: str = "dft") -> nn.Module:
        """A plain Conv2d with copies of the weights (no parameter shared with this layer)."""
        with torch.no_grad():
            pad = (self.kernel_size[0] - 1) // 2  # as __init__ set it
            return conv_op(self.weight, self.bias, pad, self.stride[0])


def _no_scale(scale: float) -> None:
    # A Plain network has no gamma, so models always pass scale 1; anything else would be dropped.
    if scale != 1.0:
        raise ValueError(f"Plain layers have no Lipschitz scale, got scale={scale}")


@register_layer("Plain", "conv")
def plain_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    scale: float = 1.0,
    input_size: int | None = None,
) -> PlainConv:
    """The Plain family's conv constructor (lipcore.catalog.layer_families): `input_size` is not needed."""
    _no_scale(scale)
    return PlainConv(in_channels, out_channels, kernel_size, stride=stride)


@register_layer("Plain", "lin")
@register_layer("Plain", "fc")
def plain_linear(in_features: int, out_features: int, *, scale: float = 1.0) -> nn.Linear:
    """The Plain family's fc and last-linear constructor: nn.Linear (its ReLU is a separate module)."""
    _no_scale(scale)
    return nn.Linear(in_features, out_features)


register_layer("Plain", "activation")(nn.ReLU)

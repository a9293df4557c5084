"""Unconstrained layers of the paper's `Plain` baseline (no Lipschitz bound)."""

from __future__ import annotations

from torch import nn


class PlainConv(nn.Conv2d):
    """nn.Conv2d with zero 'same' padding (k - 1) // 2, as the reference `PlainConv` for odd kernels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, **kwargs) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, **kwargs)

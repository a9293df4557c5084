"""Parameter initialisations shared by the layer families (those of the reference code)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def torch_default_(weight: Tensor, bias: Tensor | None) -> None:
    """What nn.Linear / nn.Conv2d do: Kaiming-uniform(a=sqrt 5) weight, U(+-1/sqrt(fan_in)) bias."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    _fan_in_bias_(weight, bias)


def xavier_(weight: Tensor, bias: Tensor | None) -> None:
    """What the SLL and AOL reference layers do: Xavier-normal weight, U(+-1/sqrt(fan_in)) bias."""
    nn.init.xavier_normal_(weight)
    _fan_in_bias_(weight, bias)


def _fan_in_bias_(weight: Tensor, bias: Tensor | None) -> None:
    if bias is None:
        return
    fan_in = weight[0].numel()
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    with torch.no_grad():
        bias.uniform_(-bound, bound)

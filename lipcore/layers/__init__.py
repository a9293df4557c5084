"""Lipschitz layers: the sandwich layer and the baselines the paper compares with.

| family   | module      | layers                                              | bound            |
|----------|-------------|-----------------------------------------------------|------------------|
| Sandwich | sandwich.py | SandwichFc, SandwichLin, SandwichConv, SandwichConvLin | 1 (SDP-tight)  |
| Orthogon | orthogon.py | OrthogonFc, OrthogonLin, OrthogonConv, OrthogonConvLin | 1 (Cayley)     |
| AOL      | aol.py      | AolFc, AolLin, AolConv, AolConvLin                  | 1 (rescaling)    |
| SLL      | sll.py      | SLLBlockFc, SLLBlockConv                            | 1 (residual SDP) |
| LLN      | normalized.py | LinearNormalized                                  | row-wise         |
| Plain    | plain.py    | PlainConv (+ torch's nn.Linear)                     | none             |

Each bound is from `scale * x` to the output; models put sqrt(gamma) on the first and last layers.
"""

from lipcore.layers.aol import AolConv, AolConvLin, AolFc, AolLin
from lipcore.layers.cayley import cayley
from lipcore.layers.channels import FirstChannel, PaddingChannels, PaddingFeatures
from lipcore.layers.normalized import LinearNormalized
from lipcore.layers.orthogon import OrthogonConv, OrthogonConvLin, OrthogonFc, OrthogonLin
from lipcore.layers.plain import PlainConv
from lipcore.layers.reparam import Reparameterized, invalidate_caches
from lipcore.layers.sandwich import SandwichConv, SandwichConvLin, SandwichFc, SandwichLin
from lipcore.layers.sll import SLLBlockConv, SLLBlockFc

__all__ = [
    "AolConv", "AolConvLin", "AolFc", "AolLin", "FirstChannel", "LinearNormalized", "OrthogonConv",
    "OrthogonConvLin", "OrthogonFc", "OrthogonLin", "PaddingChannels", "PaddingFeatures", "PlainConv",
    "Reparameterized", "SLLBlockConv", "SLLBlockFc", "SandwichConv", "SandwichConvLin", "SandwichFc",
    "SandwichLin", "cayley", "invalidate_caches",
]

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

Families are records in the catalog (lipcore.catalog.layer_families, torch-free), which models build
from; each layer module registers its constructors there (`@register_layer("Sandwich", "conv")`),
so importing this package registers the paper's families. (The Cayley transform is
`lipcore.layers.cayley.cayley`.)
"""

from __future__ import annotations

from lipcore.layers.aol import AolConv, AolConvLin, AolFc, AolLin
from lipcore.layers.channels import FirstChannel, PaddingChannels, PaddingFeatures
from lipcore.layers.normalized import LinearNormalized
from lipcore.layers.orthogon import OrthogonConv, OrthogonConvLin, OrthogonFc, OrthogonLin
from lipcore.layers.plain import PlainConv
from lipcore.layers.reparam import Reparameterized, check_caches_by_version, invalidate_caches
from lipcore.layers.sandwich import SandwichConv, SandwichConvLin, SandwichFc, SandwichLin
from lipcore.layers.sll import SLLBlockConv, SLLBlockFc

__all__ = [
    "AolConv",
    "AolConvLin",
    "AolFc",
    "AolLin",
    "FirstChannel",
    "LinearNormalized",
    "OrthogonConv",
    "OrthogonConvLin",
    "OrthogonFc",
    "OrthogonLin",
    "PaddingChannels",
    "PaddingFeatures",
    "PlainConv",
    "Reparameterized",
    "SLLBlockConv",
    "SLLBlockFc",
    "SandwichConv",
    "SandwichConvLin",
    "SandwichFc",
    "SandwichLin",
    "invalidate_caches",
    "check_caches_by_version",
]

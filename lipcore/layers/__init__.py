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

Families are records in `lipcore.layers.families` (torch-free), which models build from.
The layer classes load on first use (`lipcore.layers.SandwichConv`), so `lipcore.layers.families`
can be imported without torch. (The Cayley transform is `lipcore.layers.cayley.cayley`.)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from lipcore.layers.aol import AolConv, AolConvLin, AolFc, AolLin
    from lipcore.layers.channels import FirstChannel, PaddingChannels, PaddingFeatures
    from lipcore.layers.normalized import LinearNormalized
    from lipcore.layers.orthogon import OrthogonConv, OrthogonConvLin, OrthogonFc, OrthogonLin
    from lipcore.layers.plain import PlainConv
    from lipcore.layers.reparam import Reparameterized, check_caches_by_version, invalidate_caches
    from lipcore.layers.sandwich import SandwichConv, SandwichConvLin, SandwichFc, SandwichLin
    from lipcore.layers.sll import SLLBlockConv, SLLBlockFc

_WHERE = {
    "AolConv": "aol",
    "AolConvLin": "aol",
    "AolFc": "aol",
    "AolLin": "aol",
    "FirstChannel": "channels",
    "PaddingChannels": "channels",
    "PaddingFeatures": "channels",
    "LinearNormalized": "normalized",
    "OrthogonConv": "orthogon",
    "OrthogonConvLin": "orthogon",
    "OrthogonFc": "orthogon",
    "OrthogonLin": "orthogon",
    "PlainConv": "plain",
    "Reparameterized": "reparam",
    "invalidate_caches": "reparam",
    "check_caches_by_version": "reparam",
    "SandwichConv": "sandwich",
    "SandwichConvLin": "sandwich",
    "SandwichFc": "sandwich",
    "SandwichLin": "sandwich",
    "SLLBlockConv": "sll",
    "SLLBlockFc": "sll",
}


_SUBMODULES = (
    "aol",
    "bounds",
    "cayley",
    "channels",
    "families",
    "fourier",
    "init",
    "normalized",
    "orthogon",
    "plain",
    "reparam",
    "sandwich",
    "sll",
)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"lipcore.layers.{name}")
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'lipcore.layers' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lipcore.layers.{where}"), name)


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

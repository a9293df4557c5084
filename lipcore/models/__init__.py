"""The paper's architectures, built from an ExperimentSpec: `lipcore.models.build(spec)`.

| model  | layers                             | data                | module     |
|--------|------------------------------------|---------------------|------------|
| Toy    | Sandwich, Orthogon, Aol, SLL, Plain | square_wave (1-D)  | toy.py     |
| KWL    | Sandwich, Orthogon, Aol, Plain     | 32x32, 64x64 images | kwl.py     |
| Resnet | SLL (optionally LLN)               | 32x32, 64x64 images | resnet.py  |
| DNN    | Sandwich + LLN                     | 32x32, 64x64 images | dnn.py     |

What each model accepts is its card (lipcore.models.cards, torch-free); the layers of Toy and KWL
are every registered family that can build them (lipcore.layers.families). The builders and
classes load on first use, so `lipcore.models.cards` can be imported without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from lipcore.models.base import LipschitzNet
    from lipcore.models.dnn import DNN
    from lipcore.models.kwl import KWL
    from lipcore.models.registry import build, list_models, register_model
    from lipcore.models.resnet import Resnet
    from lipcore.models.toy import Toy

_WHERE = {
    "DNN": "dnn",
    "KWL": "kwl",
    "LipschitzNet": "base",
    "Resnet": "resnet",
    "Toy": "toy",
    "build": "registry",
    "list_models": "registry",
    "register_model": "registry",
}


_SUBMODULES = ("base", "cards", "dnn", "kwl", "registry", "resnet", "toy")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"lipcore.models.{name}")
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'lipcore.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lipcore.models.{where}"), name)


__all__ = ["DNN", "KWL", "LipschitzNet", "Resnet", "Toy", "build", "list_models", "register_model"]

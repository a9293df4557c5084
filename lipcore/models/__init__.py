"""The paper's architectures, built from an ExperimentSpec: `lipcore.models.build(spec)`.

| model  | layers                             | data                | module     |
|--------|------------------------------------|---------------------|------------|
| Toy    | Sandwich, Orthogon, Aol, SLL, Plain | square_wave (1-D)  | toy.py     |
| KWL    | Sandwich, Orthogon, Aol, Plain     | 32x32, 64x64 images | kwl.py     |
| Resnet | SLL (optionally LLN)               | 32x32, 64x64 images | resnet.py  |
| DNN    | Sandwich + LLN                     | 32x32, 64x64 images | dnn.py     |

What each model accepts is its card (lipcore.catalog.model_cards, torch-free); the layers of Toy and KWL
are every registered family that can build them (lipcore.catalog.layer_families). Each model module
registers its builder (`@register_model("KWL")`), so importing this package registers the paper's.
"""

from __future__ import annotations

from lipcore.models.base import LipschitzNet
from lipcore.models.dnn import DNN
from lipcore.models.kwl import KWL
from lipcore.models.registry import build, list_models, register_model
from lipcore.models.resnet import Resnet
from lipcore.models.toy import Toy

__all__ = ["DNN", "KWL", "LipschitzNet", "Resnet", "Toy", "build", "list_models", "register_model"]

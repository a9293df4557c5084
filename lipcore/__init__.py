"""lipcore: Lipschitz-bounded deep networks (sandwich layers and baselines), training and certificates.

`import lipcore` is cheap: submodules load on first use, so `lipcore.spec` (pydantic only) can be
used by the API without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SUBMODULES = (
    "spec",
    "layers",
    "models",
    "losses",
    "certify",
    "precision",
    "data",
    "train",
    "checkpoint",
    "evaluate",
    "cli",
)

if TYPE_CHECKING:  # pragma: no cover
    from lipcore import certify, layers, losses, models, spec  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"lipcore.{name}")
    raise AttributeError(f"module 'lipcore' has no attribute {name!r}")

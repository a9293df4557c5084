"""The public name of the experiment schema: `from lipcore.spec import ExperimentSpec`.

The spec lives in the torch-free catalog (lipcore/catalog/spec.py) beside the records it is
validated against; this module re-exports it so that the name the guide and the service use stays.
"""

from __future__ import annotations

from lipcore.catalog.spec import IMAGE_FOLDER, XENT_OFFSET, ExperimentSpec, register_field

__all__ = ["IMAGE_FOLDER", "XENT_OFFSET", "ExperimentSpec", "register_field"]

"""The description layer: what an experiment may be, declared once, torch-free.

    spec.py            ExperimentSpec: the schema of an experiment (the public name is lipcore.spec)
    model_cards.py     model cards: which layers, scales and data each architecture takes
    layer_families.py  layer families: the kinds of layer each provides, widths, whether bounded
    dataset_cards.py   dataset cards: input kind, shape, classes, mean and std
    fields.py          spec fields registered beyond the paper's (a plug-in's, a test's)
    flags.py           the command-line flags of `python -m lipcore` and `lbdn submit`, from the spec
    presets.py         the paper's experiments as presets, and its published numbers
    registry.py        the one shape of every registry (records by name)

Nothing here imports torch (tests/test_imports.py checks it): the API validates specs and serves
the catalog, and the client builds its flags, without it. The records (this package's names)
need only the standard library, so the layers and models register against them without pydantic;
the spec, its fields and the flags (pydantic) are imported from their modules:
`from lipcore.spec import ExperimentSpec, register_field`, `from lipcore.catalog.fields import
SpecField`. Torch code registers against these records by name in its own module:
`@register_model("KWL")` (lipcore.models.registry) on a builder, `@register_layer("Sandwich",
"conv")` on a layer, `@register_loader("cifar10")` (lipcore.data) on a dataset's reader.
"""

from __future__ import annotations

from lipcore.catalog.dataset_cards import (
    IMAGE_FOLDER,
    DatasetCard,
    DatasetInfo,
    dataset_names,
    datasets,
    get_dataset,
    register_dataset,
)
from lipcore.catalog.layer_families import (
    LayerFamily,
    families,
    family_names,
    get_family,
    register_family,
    register_layer,
)
from lipcore.catalog.model_cards import ModelCard, cards, get_card, model_names, register_card

__all__ = [
    "IMAGE_FOLDER",
    "DatasetCard",
    "DatasetInfo",
    "LayerFamily",
    "ModelCard",
    "cards",
    "dataset_names",
    "datasets",
    "families",
    "family_names",
    "get_card",
    "get_dataset",
    "get_family",
    "model_names",
    "register_card",
    "register_dataset",
    "register_family",
    "register_layer",
]

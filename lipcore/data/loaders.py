"""Dataset readers, registered against the catalog's dataset cards (lipcore.catalog.dataset_cards).

Each reader's module registers it by the dataset's name, as models register builders:

    @register_loader("blobs")
    def load_blobs(spec: ExperimentSpec, data_dir: Path) -> ImageArrays: ...

A loader returns `ImageArrays` (uint8 images; lipcore.data.arrays) or, for 1-D data, the tensors
(x_train, y_train, x_test, y_test). A dataset whose card reads its shape from the data
(`from_folder`) also registers `shape`: (spec, data_dir) -> (image size, class names), reading
only what the API needs to validate a spec (image headers, never whole images).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lipcore.catalog.dataset_cards import get_dataset
from lipcore.catalog.registry import Registry

if TYPE_CHECKING:
    from lipcore.catalog.spec import ExperimentSpec

Loader = Callable[["ExperimentSpec", Path], Any]
ShapeReader = Callable[["ExperimentSpec", Path], tuple[int, list[str]]]


@dataclass(frozen=True)
class Reader:
    """How one dataset is read: `load` (both splits) and, for folder datasets, `shape`."""

    load: Loader
    shape: ShapeReader | None = None


READERS: Registry[Reader] = Registry("dataset reader")


def register_loader(name: str, *, shape: ShapeReader | None = None) -> Callable[[Loader], Loader]:
    """Decorator: the loader of the registered dataset `name` (and its shape reader, if any)."""
    card = get_dataset(name)
    if card.from_folder and shape is None:
        raise ValueError(f"dataset {name!r} reads its shape from the data: register a shape reader too")

    def wrap(load: Loader) -> Loader:
        READERS.add(name, Reader(load, shape))
        return load

    return wrap


def reader(name: str) -> Reader:
    """The registered reader of dataset `name` (ValueError if its module registered none)."""
    get_dataset(name)  # an unknown dataset says so
    if name not in READERS.entries:
        raise ValueError(f"dataset {name!r} has no registered loader; import the module that reads it")
    return READERS.get(name)

"""Datasets of the paper (square_wave, cifar10, cifar100, tiny_imagenet) and users' image folders.

    data = load_data(spec, device="cuda")
    for epoch in range(start_epoch, spec.epochs):
        for x, y in data.train_batches(epoch, start_step=k if epoch == start_epoch else 0): ...

Everything is read from the data dir and nothing is downloaded unless `download=True`. Callers
pass the data dir; without one, `data_dir_default()` (env LBDN_DATA_DIR, else ./data) is the
command line's default. The service never relies on it: it reads LBDN_DATA_DIR once, in its
Settings (core.settings), and passes `data_dir=` explicitly.

What each dataset is (shape, classes, mean, std) is its card in lipcore.catalog.dataset_cards; how it is
read is the loader its module registers (lipcore.data.loaders). Importing this package registers the
image readers and does not import torch; `load_data` brings torch in (lipcore.data.batches, which
also registers the torch-generated square wave), so the API process can call `resolve_spec` cheaply.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lipcore.catalog.dataset_cards import get_dataset
from lipcore.catalog.spec import ExperimentSpec
from lipcore.data import cifar, image_folder, tiny_imagenet  # noqa: F401  (they register their loaders)
from lipcore.data.arrays import ImageArrays
from lipcore.data.errors import DatasetNotFoundError
from lipcore.data.loaders import reader, register_loader

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from lipcore.data.batches import Data

__all__ = ["DatasetNotFoundError", "data_dir_default", "load_data", "register_loader", "resolve_spec"]


def data_dir_default() -> Path:
    """The data dir: env LBDN_DATA_DIR, else ./data (relative to the working directory)."""
    return Path(os.environ.get("LBDN_DATA_DIR") or "./data").expanduser()


def _with_shape(spec: ExperimentSpec, img_size: int, classes: list[str]) -> ExperimentSpec:
    update = {"in_channels": 3, "img_size": img_size, "num_classes": len(classes)}
    for key, value in update.items():
        given = getattr(spec, key)
        if given is not None and given != value:
            raise ValueError(
                f"{key}={given} contradicts the image folder {spec.data_path!r} ({value}); "
                f"a model for {given} cannot use this data"
            )
    # Validated like any new spec (e.g. a one-class folder is rejected), not just copied.
    return ExperimentSpec.model_validate({**spec.model_dump(), **update})


def resolve_spec(spec: ExperimentSpec, data_dir: str | Path | None = None) -> ExperimentSpec:
    """`spec` with in_channels, img_size and num_classes read from its image folder.

    Only image headers are read (and remembered in the cache), never whole images. Datasets whose
    card fixes the shape are returned unchanged. Raises DatasetNotFoundError if the folder is
    missing and ValueError if its images are not all 32x32 or all 64x64 (naming a bad file).
    """
    if not get_dataset(spec.dataset).from_folder:
        return spec
    shape = reader(spec.dataset).shape
    assert shape is not None  # register_loader insists on one for a folder dataset
    size, classes = shape(spec, Path(data_dir) if data_dir is not None else data_dir_default())
    return _with_shape(spec, size, classes)


def load_data(
    spec: ExperimentSpec,
    data_dir: str | Path | None = None,
    *,
    device: torch.device | str = "cpu",
    download: bool = False,
) -> Data:
    """Load `spec.dataset` from `data_dir` (default `data_dir_default()`) onto `device`.

    `download=True` fetches cifar10/cifar100/tiny_imagenet from their official URLs (md5-checked)
    when they are missing; it has no effect on other datasets. The returned `Data.spec` is resolved
    (image folders: shape and classes filled in).
    """
    from lipcore.data.batches import Data

    card = get_dataset(spec.dataset)
    source = _read(spec, Path(data_dir) if data_dir is not None else data_dir_default(), download)
    if not isinstance(source, ImageArrays):  # 1-D data: (x, y, x_test, y_test) tensors
        assert card.mean is not None and card.std is not None
        x, y, xt, yt = source
        return Data(spec, train=(x, y), test=(xt, yt), classes=[], mean=card.mean, std=card.std, device=device)
    if card.from_folder:
        spec = _with_shape(spec, source.train_x.shape[-1], source.classes)
    mean, std = (card.mean, card.std) if card.mean is not None else (source.pixel_mean, source.pixel_std)
    assert mean is not None and std is not None  # a folder's loader gives its pixel statistics
    # As in the paper, the std divides only with `normalized`; the mean is always subtracted.
    std = std if spec.normalized else (1.0,) * len(std)
    return Data.from_images(spec, source, mean, std, device)


def _read(spec: ExperimentSpec, data_dir: Path, download: bool) -> Any:
    load = reader(spec.dataset).load
    try:
        return load(spec, data_dir)
    except DatasetNotFoundError:
        from lipcore.data.download import SOURCES
        from lipcore.data.download import download as fetch

        if not download or spec.dataset not in SOURCES:
            raise
        fetch(spec.dataset, data_dir)
    return load(spec, data_dir)

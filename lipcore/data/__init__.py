"""Datasets of the paper (square_wave, cifar10, cifar100, tiny_imagenet) and users' image folders.

    data = load_data(spec, device="cuda")
    for epoch in range(start_epoch, spec.epochs):
        for x, y in data.train_batches(epoch, start_step=k if epoch == start_epoch else 0): ...

Everything is read from the data dir and nothing is downloaded unless `download=True`. Callers
pass the data dir; without one, `data_dir_default()` (env LBDN_DATA_DIR, else ./data) is the
command line's default. The service never relies on it: it reads LBDN_DATA_DIR once, in its
Settings (core.settings), and passes `data_dir=` explicitly. Importing this package does not import torch (`Data` and
`load_data` bring it in when used), so the API process can call `resolve_spec` cheaply.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lipcore.data.cache import cache_for
from lipcore.data.errors import DatasetNotFoundError
from lipcore.spec import DATASETS, IMAGE_FOLDER, ExperimentSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from lipcore.data.batches import Data

__all__ = ["Data", "DatasetNotFoundError", "data_dir_default", "load_data", "resolve_spec"]


def __getattr__(name: str) -> Any:
    if name == "Data":
        from lipcore.data.batches import Data

        return Data
    raise AttributeError(f"module 'lipcore.data' has no attribute {name!r}")


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

    Only image headers are read (and remembered in the cache), never whole images. Other datasets
    are returned unchanged. Raises DatasetNotFoundError if the folder is missing and ValueError if
    its images are not all 32x32 or all 64x64 (naming a bad file).
    """
    if spec.dataset != IMAGE_FOLDER:
        return spec
    from lipcore.data.image_folder import folder_root, folder_shape

    data_dir = Path(data_dir) if data_dir is not None else data_dir_default()
    assert spec.data_path is not None  # the spec's own validation guarantees it
    size, classes = folder_shape(folder_root(spec.data_path, data_dir), cache_for(data_dir))
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
    when they are missing; it has no effect on square_wave and image folders. The returned
    `Data.spec` is resolved (image folders: shape and classes filled in).
    """
    from lipcore.data.batches import Data

    data_dir = Path(data_dir) if data_dir is not None else data_dir_default()
    if spec.dataset == "square_wave":
        return Data.from_square_wave(spec, device)
    if spec.dataset == IMAGE_FOLDER:
        from lipcore.data.image_folder import folder_root, load_image_folder

        assert spec.data_path is not None
        arrays = load_image_folder(folder_root(spec.data_path, data_dir), cache_for(data_dir))
        spec = _with_shape(spec, arrays.train_x.shape[-1], arrays.classes)
        assert arrays.pixel_mean is not None and arrays.pixel_std is not None
        mean, std = arrays.pixel_mean, arrays.pixel_std
    else:
        arrays = _load_known(spec.dataset, data_dir, download)
        mean, std = DATASETS[spec.dataset].mean, DATASETS[spec.dataset].std
    # As in the paper, the std divides only with `normalized`; the mean is always subtracted.
    std = std if spec.normalized else (1.0,) * len(std)
    return Data.from_images(spec, arrays, mean, std, device)


def _load_known(dataset: str, data_dir: Path, download: bool) -> Any:
    from lipcore.data.cifar import load_cifar10, load_cifar100
    from lipcore.data.tiny_imagenet import load_tiny_imagenet

    loaders = {
        "cifar10": lambda: load_cifar10(data_dir),
        "cifar100": lambda: load_cifar100(data_dir),
        "tiny_imagenet": lambda: load_tiny_imagenet(data_dir, cache_for(data_dir)),
    }
    try:
        return loaders[dataset]()
    except DatasetNotFoundError:
        if not download:
            raise
    from lipcore.data.download import download as fetch

    fetch(dataset, data_dir)
    return loaders[dataset]()

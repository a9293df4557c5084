"""A user's own images: `ROOT/train/<class>/*.{png,jpg,jpeg}` and optionally `ROOT/test/<class>/`.

Classes are the sorted names of the train subfolders; label i is `classes[i]`. All images must be
squares of one allowed size (32x32 or 64x64); they are converted to RGB.

Without a test split, about 10% of each class (at least one image of any class with two or more) is
held out as the test set. Which images are held out depends only on each file's path under train/
and a fixed salt -- not on `spec.seed` -- so the split is the same for every seed and every library
version, and adding images to a folder leaves the existing assignments unchanged.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipcore.catalog.dataset_cards import IMAGE_FOLDER
from lipcore.catalog.spec import ExperimentSpec
from lipcore.data.arrays import ImageArrays, channel_stats
from lipcore.data.cache import ArrayCache, cache_for
from lipcore.data.decode import cached_decode, cached_size, entry_name, is_image_name
from lipcore.data.errors import DatasetNotFoundError
from lipcore.data.loaders import register_loader

HOLDOUT_FRACTION = 0.1
_HOLDOUT_SALT = b"lbdn-holdout-v1\0"  # fixed on purpose: see the module docstring


def layout(root: Path) -> str:
    root = root.absolute()
    return (
        f"  {root}/train/<class>/*.png|*.jpg|*.jpeg   (32x32 or 64x64 pixels, one size for all)\n"
        f"  {root}/test/<class>/...   (optional; without it 10% of train is held out)"
    )


def folder_root(data_path: str, data_dir: Path, *, confine: bool = False) -> Path:
    """The folder `data_path` names: itself if absolute, else relative to `data_dir`.

    The one place a data_path becomes a path (the service's API and the training code both call
    it). No `~` expansion: "~/x" is a folder named "~" in the data dir, so the API's check and the
    folder read are the same path. With `confine`, the resolved folder (symlinks and ".." followed)
    must lie inside the resolved data dir; ValueError otherwise, and for a NUL character.
    """
    if "\x00" in data_path:
        raise ValueError("data_path must not contain a NUL character")
    path = Path(data_path)
    path = path if path.is_absolute() else Path(data_dir) / path
    if confine:
        root = Path(data_dir).resolve()
        if not path.resolve().is_relative_to(root):
            raise ValueError(f"data_path must lie inside the data dir ({root}), not {data_path!r}")
    return path


@dataclass(frozen=True)
class FolderListing:
    """Sorted image files of a folder dataset (posix paths relative to `root`) and their labels."""

    root: Path
    classes: list[str]
    train: list[str]
    train_y: np.ndarray
    test: list[str] | None
    test_y: np.ndarray | None

    def paths(self, rel_paths: list[str]) -> list[str]:
        base = os.fspath(self.root)
        return [os.path.join(base, rel) for rel in rel_paths]


def _entries_of(folder: Path) -> list[os.DirEntry[str]]:
    # os.scandir, not pathlib: listing 50,000 files through Path objects costs seconds.
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _split(split_dir: Path, split: str) -> list[tuple[str, list[str]]]:
    """[(class name, [relative image paths])] of one split, sorted."""
    out = []
    for cls in _entries_of(split_dir):
        if cls.is_dir():
            names = [e.name for e in _entries_of(Path(cls.path)) if e.is_file() and is_image_name(e.name)]
            out.append((cls.name, [f"{split}/{cls.name}/{n}" for n in names]))
    return out


def list_folder(root: Path) -> FolderListing:
    """List `root`; DatasetNotFoundError if train/ is missing, ValueError if it is malformed."""
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DatasetNotFoundError(train_dir, layout(root), f"put your images there (data_path is {root})")
    classes, train, train_y = [], [], []
    for label, (name, files) in enumerate(_split(train_dir, "train")):
        if not files:
            raise ValueError(f"{train_dir / name}: class folder holds no .png/.jpg/.jpeg images")
        classes.append(name)
        train += files
        train_y += [label] * len(files)
    if not classes:
        raise DatasetNotFoundError(train_dir, layout(root), "make one subfolder of images per class")
    test, test_y = None, None
    test_dir = root / "test"
    if test_dir.is_dir():
        index = {name: i for i, name in enumerate(classes)}
        test, test_y = [], []
        for name, files in _split(test_dir, "test"):
            if name not in index:
                raise ValueError(f"{test_dir / name}: test class {name!r} has no train folder")
            test += files
            test_y += [index[name]] * len(files)
        if not test:
            raise ValueError(f"{test_dir}: test split holds no images (remove it to hold out 10%)")
    as_labels = lambda ys: np.asarray(ys, dtype=np.int64)  # noqa: E731
    return FolderListing(root, classes, train, as_labels(train_y), test, None if test_y is None else as_labels(test_y))


def holdout_mask(listing: FolderListing) -> np.ndarray:
    """Boolean (N_train,) mask of the training files held out as the test set (see module doc)."""
    rank = np.array(
        [  # the path under train/ decides, through a salted hash
            int.from_bytes(hashlib.sha256(_HOLDOUT_SALT + rel[len("train/") :].encode()).digest()[:8], "big")
            for rel in listing.train
        ],
        dtype=np.uint64,
    )
    mask = np.zeros(len(listing.train), dtype=bool)
    for label in range(len(listing.classes)):
        idx = np.flatnonzero(listing.train_y == label)
        k = max(1, round(HOLDOUT_FRACTION * len(idx))) if len(idx) >= 2 else 0
        mask[idx[np.argsort(rank[idx], kind="stable")[:k]]] = True
    return mask


def _entries(listing: FolderListing) -> tuple[str, str | None]:
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", listing.root.absolute().name)[:40]
    tag = f"folder-{readable or 'root'}"
    train = entry_name(f"{tag}-train", listing.root, listing.train)
    test = None if listing.test is None else entry_name(f"{tag}-test", listing.root, listing.test)
    return train, test


def folder_shape(root: Path, cache: ArrayCache) -> tuple[int, list[str]]:
    """(image side length in pixels, class names), reading only image headers (cached)."""
    listing = list_folder(root)
    return _common_size(listing, cache, *_entries(listing)), listing.classes


def _common_size(listing: FolderListing, cache: ArrayCache, train_name: str, test_name: str | None) -> int:
    size = cached_size(cache, train_name, listing.paths(listing.train))
    if listing.test is not None and test_name is not None:
        test_size = cached_size(cache, test_name, listing.paths(listing.test))
        if test_size != size:
            raise ValueError(
                f"{listing.root / listing.test[0]}: test images are {test_size}x{test_size} but train images "
                f"are {size}x{size}; both splits must have one size (32x32 or 64x64)"
            )
    return size


def load_image_folder(root: Path, cache: ArrayCache) -> ImageArrays:
    """Decode (or read from `cache`) a folder dataset; stats are those of its training images."""
    listing = list_folder(root)
    train_name, test_name = _entries(listing)
    x = cached_decode(cache, train_name, listing.paths(listing.train))  # checks every size while decoding
    size = x.shape[-1]
    if listing.test is not None and test_name is not None:
        train_x, train_y = x, listing.train_y
        test_x = cached_decode(cache, test_name, listing.paths(listing.test), size)
        test_y = listing.test_y
        assert test_y is not None  # list_folder gives test labels whenever it gives a test split
        stats_key = "stats_all"
    else:
        held = holdout_mask(listing)
        train_x, train_y = x[~held], listing.train_y[~held]
        test_x, test_y = x[held], listing.train_y[held]
        stats_key = "stats_holdout"
    stats = cache.read_meta(train_name).get(stats_key)
    if not (isinstance(stats, list) and len(stats) == 2):
        stats = channel_stats(train_x)
        cache.update_meta(train_name, **{stats_key: stats})
    return ImageArrays(
        train_x, train_y, test_x, test_y, listing.classes, pixel_mean=tuple(stats[0]), pixel_std=tuple(stats[1])
    )


def _folder(spec: ExperimentSpec, data_dir: Path) -> Path:
    assert spec.data_path is not None  # the spec's own validation guarantees it for a folder dataset
    return folder_root(spec.data_path, data_dir)


register_loader(
    IMAGE_FOLDER,
    shape=lambda spec, data_dir: folder_shape(_folder(spec, data_dir), cache_for(data_dir)),
)(lambda spec, data_dir: load_image_folder(_folder(spec, data_dir), cache_for(data_dir)))

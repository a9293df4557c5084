"""Tiny ImageNet in the layout of its official zip; the val split is the test set (as in the paper).

    <data_dir>/tiny-imagenet-200/wnids.txt                    200 class ids (wnids), one a line
    <data_dir>/tiny-imagenet-200/train/<wnid>/images/*.JPEG   500 images per class
    <data_dir>/tiny-imagenet-200/val/images/*.JPEG            10,000 images
    <data_dir>/tiny-imagenet-200/val/val_annotations.txt      filename <TAB> wnid <TAB> box...

Class order is the sorted wnids. Images are 64x64 (some grayscale, converted to RGB); decoded
pixels are cached under `<data_dir>/.lbdn-cache/`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lipcore.data.arrays import ImageArrays
from lipcore.data.cache import ArrayCache, cache_for
from lipcore.data.decode import cached_decode, entry_name, is_image_name
from lipcore.data.errors import DatasetNotFoundError
from lipcore.data.loaders import register_loader

TINY_DIR = "tiny-imagenet-200"
IMG_SIZE = 64
_LAYOUT = """  tiny-imagenet-200/wnids.txt
  tiny-imagenet-200/train/<wnid>/images/*.JPEG
  tiny-imagenet-200/val/images/*.JPEG
  tiny-imagenet-200/val/val_annotations.txt   (filename<TAB>wnid<TAB>...)"""


def _missing(path: Path) -> DatasetNotFoundError:
    from lipcore.data.download import SOURCES

    return DatasetNotFoundError(
        path,
        _LAYOUT,
        f"call load_data(..., download=True), or download {SOURCES['tiny_imagenet'].url}, check "
        f"its md5 and unzip it into the data dir",
    )


def _images_in(root: Path, rel_dir: str) -> list[str]:
    """Sorted image paths (relative to `root`) in `root/rel_dir`."""
    folder = root / rel_dir
    if not folder.is_dir():
        raise _missing(folder)
    with os.scandir(folder) as it:  # scandir: pathlib is slow for 100,000 files
        names = sorted(e.name for e in it if e.is_file() and is_image_name(e.name))
    return [f"{rel_dir}/{n}" for n in names]


def list_tiny_imagenet(root: Path) -> tuple[list[str], list[str], np.ndarray, list[str], np.ndarray]:
    """(classes, train files, train labels, val files, val labels); files relative to `root`."""
    if not (root / "wnids.txt").is_file():
        raise _missing(root)
    wnids = sorted({line.strip() for line in (root / "wnids.txt").read_text().splitlines()} - {""})
    index = {w: i for i, w in enumerate(wnids)}
    train: list[str] = []
    train_y: list[int] = []
    for wnid in wnids:
        files = _images_in(root, f"train/{wnid}/images")
        train += files
        train_y += [index[wnid]] * len(files)
    annotations = root / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise _missing(annotations.parent)
    wnid_of: dict[str, str] = {}
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2:
            wnid_of[fields[0]] = fields[1]
    val = _images_in(root, "val/images")
    val_y = []
    for rel in val:
        found = wnid_of.get(rel.rsplit("/", 1)[-1])
        if found is None or found not in index:
            raise ValueError(f"{root / rel}: no valid class in {annotations} (found {found!r})")
        val_y.append(index[found])
    as_labels = lambda ys: np.asarray(ys, dtype=np.int64)  # noqa: E731
    return wnids, train, as_labels(train_y), val, as_labels(val_y)


def load_tiny_imagenet(data_dir: Path, cache: ArrayCache) -> ImageArrays:
    """Tiny ImageNet: 100,000 train / 10,000 val images, uint8 (N, 3, 64, 64), 200 classes."""
    root = Path(data_dir) / TINY_DIR
    classes, train, train_y, val, val_y = list_tiny_imagenet(root)
    x = {}
    for split, rel in (("train", train), ("val", val)):
        name = entry_name(f"tiny_imagenet-{split}", root, rel)
        x[split] = cached_decode(cache, name, [os.path.join(root, r) for r in rel], IMG_SIZE)
    train_x, val_x = x["train"], x["val"]
    return ImageArrays(train_x, train_y, val_x, val_y, classes)


register_loader("tiny_imagenet")(lambda spec, data_dir: load_tiny_imagenet(data_dir, cache_for(data_dir)))

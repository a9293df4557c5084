"""CIFAR-10 and CIFAR-100 from their official python-pickle distributions.

    <data_dir>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <data_dir>/cifar-100-python/{train, test, meta}          (the 100 fine labels are used)

Each batch file is a dict {b'data': uint8 (N, 3072) = three 32x32 planes R, G, B row-major,
b'labels' or b'fine_labels': N ints}. The pixels need no decoding, so nothing is cached.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from lipcore.data.arrays import ImageArrays
from lipcore.data.errors import DatasetNotFoundError
from lipcore.data.loaders import register_loader

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
_CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
_CIFAR100_FILES = ("train", "test", "meta")
# The only globals a CIFAR pickle may name: how numpy rebuilds an array (numpy 1.x and 2.x names),
# and how a Python 3 writer of protocol 2 spells a bytes object.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"CIFAR file refers to {module}.{name}; refusing to load it")
        return super().find_class(module, name)


def _read_official_pickle(path: Path) -> dict[bytes, Any]:
    # Pickle is the official CIFAR format, so this is the one place lipcore reads pickles, and only
    # for the exact file names above. The unpickler also refuses any global except numpy's array
    # constructors, so a tampered file cannot run code. encoding="bytes": these are Python 2 pickles.
    if path.name not in _CIFAR10_FILES + _CIFAR100_FILES:
        raise ValueError(f"{path} is not a CIFAR distribution file")
    with open(path, "rb") as f:
        obj = _CifarUnpickler(f, encoding="bytes").load()
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, got {type(obj).__name__}")
    return obj


def _images(batch: dict[bytes, Any], path: Path) -> np.ndarray:
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' has shape {data.shape}, expected (N, 3072)")
    return data.reshape(-1, 3, 32, 32)  # the row-major planes are already (C, H, W)


def _check_files(root: Path, names: tuple[str, ...], layout: str, url: str) -> None:
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise DatasetNotFoundError(
            root,
            f"{layout}\n(missing: {', '.join(missing)})",
            f"call load_data(..., download=True), or download {url}, check its md5 and unpack it "
            f"into {root.parent.absolute()}",
        )


def load_cifar10(data_dir: Path) -> ImageArrays:
    """CIFAR-10: 50,000 train / 10,000 test images, uint8 (N, 3, 32, 32), 10 classes."""
    from lipcore.data.download import SOURCES

    root = Path(data_dir) / CIFAR10_DIR
    _check_files(root, _CIFAR10_FILES, f"  {CIFAR10_DIR}/{{{', '.join(_CIFAR10_FILES)}}}", SOURCES["cifar10"].url)
    xs, ys = [], []
    for name in _CIFAR10_FILES[:5]:
        batch = _read_official_pickle(root / name)
        xs.append(_images(batch, root / name))
        ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
    test = _read_official_pickle(root / "test_batch")
    meta = _read_official_pickle(root / "batches.meta")
    return ImageArrays(
        train_x=np.concatenate(xs),
        train_y=np.concatenate(ys),
        test_x=_images(test, root / "test_batch"),
        test_y=np.asarray(test[b"labels"], dtype=np.int64),
        classes=[n.decode() for n in meta[b"label_names"]],
    )


def load_cifar100(data_dir: Path) -> ImageArrays:
    """CIFAR-100 (fine labels): 50,000 train / 10,000 test images, uint8 (N, 3, 32, 32), 100 classes."""
    from lipcore.data.download import SOURCES

    root = Path(data_dir) / CIFAR100_DIR
    _check_files(root, _CIFAR100_FILES, f"  {CIFAR100_DIR}/{{{', '.join(_CIFAR100_FILES)}}}", SOURCES["cifar100"].url)
    train = _read_official_pickle(root / "train")
    test = _read_official_pickle(root / "test")
    meta = _read_official_pickle(root / "meta")
    return ImageArrays(
        train_x=_images(train, root / "train"),
        train_y=np.asarray(train[b"fine_labels"], dtype=np.int64),
        test_x=_images(test, root / "test"),
        test_y=np.asarray(test[b"fine_labels"], dtype=np.int64),
        classes=[n.decode() for n in meta[b"fine_label_names"]],
    )


register_loader("cifar10")(lambda spec, data_dir: load_cifar10(data_dir))
register_loader("cifar100")(lambda spec, data_dir: load_cifar100(data_dir))

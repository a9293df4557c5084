"""Writers of small fake datasets in the real on-disk formats, shared by the data, train and CLI tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from lipcore.spec import ExperimentSpec


def _official_pickle(path: Path, obj: dict) -> None:
    # The official files are Python 2 pickles, whose arrays name numpy.core.multiarray.
    blob = pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(blob)


def _cifar_pixels(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(data_dir: Path, per_batch: int = 6, n_test: int = 7) -> dict:
    rng = np.random.default_rng(0)
    root = data_dir / "cifar-10-batches-py"
    root.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        x, y = _cifar_pixels(rng, per_batch), rng.integers(0, 10, per_batch).tolist()
        _official_pickle(
            root / f"data_batch_{i}",
            {b"batch_label": b"x", b"data": x, b"labels": y, b"filenames": [b"f.png"] * per_batch},
        )
        xs.append(x)
        ys += y
    xt, yt = _cifar_pixels(rng, n_test), rng.integers(0, 10, n_test).tolist()
    _official_pickle(root / "test_batch", {b"data": xt, b"labels": yt})
    names = [
        n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    ]
    _official_pickle(root / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return {"x": np.concatenate(xs), "y": ys, "xt": xt, "yt": yt}


def write_cifar100(data_dir: Path, n: int = 12, n_test: int = 5) -> dict:
    rng = np.random.default_rng(1)
    root = data_dir / "cifar-100-python"
    root.mkdir(parents=True)
    x, y = _cifar_pixels(rng, n), rng.integers(0, 100, n).tolist()
    xt, yt = _cifar_pixels(rng, n_test), rng.integers(0, 100, n_test).tolist()
    _official_pickle(root / "train", {b"data": x, b"fine_labels": y, b"coarse_labels": [0] * n})
    _official_pickle(root / "test", {b"data": xt, b"fine_labels": yt, b"coarse_labels": [0] * n_test})
    _official_pickle(
        root / "meta",
        {b"fine_label_names": [f"c{i:03d}".encode() for i in range(100)], b"coarse_label_names": [b"all"]},
    )
    return {"x": x, "y": y, "xt": xt, "yt": yt}


def _image(path: Path, size: int, value: int | None = None, mode: str = "RGB", seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    if value is None:
        a = np.random.default_rng(seed).integers(0, 256, (size, size, channels), dtype=np.uint8)
    else:
        a = np.full((size, size, channels), value, dtype=np.uint8)
    Image.fromarray(a.squeeze(-1) if channels == 1 else a, mode).save(path)


def write_tiny_imagenet(data_dir: Path) -> Path:
    root = data_dir / "tiny-imagenet-200"
    wnids = ["n03", "n01", "n02"]  # deliberately unsorted
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for k, w in enumerate(wnids):
        for i in range(3):
            _image(root / "train" / w / "images" / f"{w}_{i}.JPEG", 64, mode="L" if i == 0 else "RGB", seed=10 * k + i)
        (root / "train" / w / f"{w}_boxes.txt").write_text("ignored\n")
    val = {"val_0.JPEG": "n02", "val_1.JPEG": "n03", "val_2.JPEG": "n01", "val_3.JPEG": "n02"}
    for i, name in enumerate(val):
        _image(root / "val" / "images" / name, 64, seed=100 + i)
    (root / "val" / "val_annotations.txt").write_text("".join(f"{n}\t{w}\t0\t0\t63\t63\n" for n, w in val.items()))
    return root


def write_folder(
    root: Path,
    classes: dict[str, int],
    size: int = 32,
    test: dict[str, int] | None = None,
) -> None:
    """classes: name -> number of images; alternates png/jpg/jpeg and RGB/RGBA/L images."""
    kinds = [(".png", "RGB"), (".jpg", "RGB"), (".png", "RGBA"), (".jpeg", "L"), (".PNG", "RGB")]
    for split, spec in (("train", classes), ("test", test or {})):
        for c, (name, n) in enumerate(spec.items()):
            for i in range(n):
                suffix, mode = kinds[i % len(kinds)]
                _image(root / split / name / f"{i:04d}{suffix}", size, mode=mode, seed=1000 * c + i)


def kwl(dataset: str, **kw) -> ExperimentSpec:
    return ExperimentSpec(model="KWL", dataset=dataset, **kw)

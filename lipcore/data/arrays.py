"""The decoded form every image dataset is loaded into, before it becomes a `Data`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageArrays:
    """Both splits of an image dataset, decoded.

    `train_x`/`test_x`: uint8 (N, 3, H, W) RGB pixels; `train_y`/`test_y`: int64 (N,) labels that
    index `classes`. `pixel_mean`/`pixel_std` are per-channel statistics of the training images in
    [0, 1], set only where the dataset has no published ones (image folders).
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    pixel_mean: tuple[float, ...] | None = None
    pixel_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("train", "test"):
            x, y = getattr(self, f"{name}_x"), getattr(self, f"{name}_y")
            if x.dtype != np.uint8 or x.ndim != 4 or len(x) != len(y):
                raise ValueError(f"{name}: need uint8 (N, C, H, W) images and N labels")


def channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std over all pixels of uint8 (N, C, H, W), in [0, 1] units.

    Accumulates in float64 chunk by chunk, so 100k images need no float copy of the whole set.
    """
    n_pix = x.shape[0] * x.shape[2] * x.shape[3]
    if n_pix == 0:
        raise ValueError("cannot compute statistics of an empty image set")
    total = np.zeros(x.shape[1])
    total_sq = np.zeros(x.shape[1])
    for i in range(0, len(x), chunk):
        part = x[i : i + chunk].astype(np.float64)
        total += part.sum(axis=(0, 2, 3))
        total_sq += np.square(part).sum(axis=(0, 2, 3))
    mean = total / n_pix
    var = np.maximum(total_sq / n_pix - mean**2, 0.0)
    return tuple(float(m) / 255 for m in mean), tuple(float(s) / 255 for s in np.sqrt(var))

"""`Data`: a loaded dataset held as tensors, served as reproducible, resumable batches.

Image pixels stay uint8 (N, 3, H, W) on the target device; each batch is gathered, converted to
float, augmented and normalised there, so no per-image Python work stands between the data and
the GPU. The order of epoch e is a permutation drawn from a private generator seeded from
(spec.seed, e) alone, so a resumed run regenerates it and skips the first `start_step` batches
without touching them; augmentation draws from torch's global RNG, whose state the trainer
checkpoints, so batches k.. of a resumed epoch equal those of the uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from lipcore.data.arrays import ImageArrays
from lipcore.data.augment import paper_augmentation
from lipcore.data.seeds import generator
from lipcore.data.square_wave import square_wave_data
from lipcore.spec import ExperimentSpec


class Data:
    """Train and test splits of one dataset on one device (build with `lipcore.data.load_data`).

    `mean`/`std` define the model input: x_model = (x_pixel - mean) / std, x_pixel in [0, 1].
    `classes` are the class names in label order ([] for square_wave).
    """

    def __init__(
        self,
        spec: ExperimentSpec,
        *,
        train: tuple[Tensor, Tensor],
        test: tuple[Tensor, Tensor],
        classes: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
    ) -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.classes: list[str] = list(classes)
        self.mean: tuple[float, ...] = tuple(float(m) for m in mean)
        self.std: tuple[float, ...] = tuple(float(s) for s in std)
        self._train_x, self._train_y = (t.to(self.device) for t in train)
        self._test_x, self._test_y = (t.to(self.device) for t in test)
        self.is_image = self._train_x.dtype == torch.uint8
        self._augment = paper_augmentation(self._train_x.shape[-1]) if self.is_image else None
        shape = (1, -1, 1, 1) if self.is_image else (1, -1)
        self._mean_t = torch.tensor(self.mean, device=self.device).reshape(shape)
        self._std_t = torch.tensor(self.std, device=self.device).reshape(shape)

    @classmethod
    def from_images(
        cls,
        spec: ExperimentSpec,
        arrays: ImageArrays,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
    ) -> Data:
        def tensors(x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
            return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))

        return cls(
            spec,
            train=tensors(arrays.train_x, arrays.train_y),
            test=tensors(arrays.test_x, arrays.test_y),
            classes=arrays.classes,
            mean=mean,
            std=std,
            device=device,
        )

    @classmethod
    def from_square_wave(cls, spec: ExperimentSpec, device: torch.device | str = "cpu") -> Data:
        x, y, xt, yt = square_wave_data(spec.seed)
        return cls(spec, train=(x, y), test=(xt, yt), classes=[], mean=(0.0,), std=(1.0,), device=device)

    def __repr__(self) -> str:
        return (
            f"Data({self.spec.dataset}, train={self.train_size}, test={self.test_size}, "
            f"shape={tuple(self._train_x.shape[1:])}, device={self.device})"
        )

    # ---- sizes ----------------------------------------------------------------------------
    @property
    def train_size(self) -> int:
        return int(self._train_x.shape[0])

    @property
    def test_size(self) -> int:
        return int(self._test_x.shape[0])

    def steps_per_epoch(self) -> int:
        """Batches per epoch: full batches only for images (the paper's drop_last), else ceil."""
        n, b = self.train_size, self.spec.train_batch_size
        if not self.is_image:
            return math.ceil(n / b)
        if n < b:
            raise ValueError(
                f"{self.spec.dataset}: {n} training images are fewer than train_batch_size={b}, "
                f"so an epoch (full batches only) would be empty; lower train_batch_size"
            )
        return n // b

    # ---- batches --------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> Tensor:
        """The permutation of training indices for `epoch`: int64 (train_size,), on the CPU."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        return torch.randperm(self.train_size, generator=generator(self.spec.seed, "order", epoch))

    def normalize(self, x_pixels: Tensor) -> Tensor:
        """Model input from pixels in [0, 1]: (x - mean) / std, same shape."""
        return (x_pixels - self._mean_t) / self._std_t

    def _pixels(self, x: Tensor) -> Tensor:
        return x.to(torch.float32).div_(255) if self.is_image else x.clone()

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches `start_step`.. of `epoch`, on the device.

        Images: x float32 (B, C, H, W), augmented and normalised; y int64 (B,).
        square_wave: x float32 (B, 1), y float32 (B, 1) targets, as stored.
        Skipped batches are neither gathered nor augmented and draw no random numbers.
        """
        steps = self.steps_per_epoch()
        if not 0 <= start_step <= steps:
            raise ValueError(f"start_step must be in 0..{steps}, got {start_step}")
        order = self.epoch_order(epoch).to(self.device)
        b = self.spec.train_batch_size
        for step in range(start_step, steps):
            idx = order[step * b : (step + 1) * b]
            x, y = self._train_x[idx], self._train_y[idx]
            if self._augment is not None:
                x = self.normalize(self._augment(self._pixels(x)))
            yield x, y

    def test_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The test set in fixed order, batches of spec.test_batch_size (last one may be short).

        Images: x float32 (B, C, H, W) normalised, no augmentation; y int64 (B,).
        """
        b = self.spec.test_batch_size
        for start in range(0, self.test_size, b):
            x = self._test_x[start : start + b]
            yield (self.normalize(self._pixels(x)) if self.is_image else x), self._test_y[start : start + b]

    def test_pixels(self, n: int | None = None) -> tuple[Tensor, Tensor]:
        """The first `n` (default all) test inputs un-normalised -- images float32 in [0, 1] -- and labels.

        For attacks that work in pixel space (AutoAttack); feed `normalize(x)` to the model.
        """
        if n is not None and n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        n = self.test_size if n is None else min(int(n), self.test_size)
        return self._pixels(self._test_x[:n]), self._test_y[:n]

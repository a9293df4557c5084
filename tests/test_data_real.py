"""lipcore.data on real images: the shared CIFAR-10 JPEG archive loaded as an image folder.

By default a subset (the first 150 images of each class) is unpacked into a pytest temporary
folder, never into the repository. LBDN_TEST_FULL_ARCHIVE=1 also loads all 50,000 images
(about 15 s of decoding on 2 cores, then the cached reload).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lipcore.catalog import get_dataset
from lipcore.data import decode as decode_mod
from lipcore.data import load_data, resolve_spec
from lipcore.data.image_folder import holdout_mask, list_folder
from lipcore.spec import ExperimentSpec
from tests.realdata import CLASSES, unpack_cifar_jpegs

PER_CLASS = 150


@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack_cifar_jpegs(tmp_path_factory.mktemp("cifar-jpeg"), PER_CLASS)


def test_real_cifar10_jpegs_load_as_an_image_folder(cifar_subset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = cifar_subset.parent / "data-dir"
    spec = ExperimentSpec(model="KWL", dataset="image_folder", data_path=str(cifar_subset), train_batch_size=256)
    resolved = resolve_spec(spec, data_dir)
    assert (resolved.in_channels, resolved.img_size, resolved.num_classes) == (3, 32, 10)
    data = load_data(spec, data_dir)
    assert data.classes == CLASSES
    held = round(0.1 * PER_CLASS)
    assert (data.train_size, data.test_size) == (10 * (PER_CLASS - held), 10 * held)
    assert torch.bincount(data._test_y).tolist() == [held] * 10
    # JPEG-re-encoded CIFAR-10: close to the published statistics of the original pixels
    assert np.allclose(data.mean, get_dataset("cifar10").mean, atol=0.03)
    # the decoded array holds exactly what Pillow decodes
    listing = list_folder(cifar_subset)
    kept = [rel for rel, out in zip(listing.train, holdout_mask(listing)) if not out]
    first = np.asarray(Image.open(cifar_subset / kept[0]).convert("RGB"))
    assert torch.equal(data._train_x[0], torch.from_numpy(first.transpose(2, 0, 1).copy()))
    assert data.steps_per_epoch() == data.train_size // 256
    x, y = next(data.train_batches(0))
    assert x.shape == (256, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (256,)
    pixels = x + torch.tensor(data.mean).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6 and pixels.std() > 0.1
    # second load: served from the .npy cache without decoding
    monkeypatch.setattr(decode_mod, "decode_files", lambda *a, **k: pytest.fail("decoded again"))
    again = load_data(spec, data_dir)
    assert torch.equal(again._train_x, data._train_x) and torch.equal(again._test_y, data._test_y)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("LBDN_TEST_FULL_ARCHIVE") != "1", reason="set LBDN_TEST_FULL_ARCHIVE=1 to decode all 50,000 images"
)
def test_full_real_archive(tmp_path: Path) -> None:
    root = unpack_cifar_jpegs(tmp_path / "cifar", None)
    spec = ExperimentSpec(model="KWL", dataset="image_folder", data_path=str(root))
    t0 = time.perf_counter()
    data = load_data(spec, tmp_path)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = load_data(spec, tmp_path)
    warm = time.perf_counter() - t0
    print(f"decode 50,000 JPEGs: cold {cold:.1f} s, cached {warm:.1f} s")
    assert (data.train_size, data.test_size) == (45_000, 5_000)
    assert torch.equal(again._test_x, data._test_x) and warm < cold / 3

"""lipcore.data formats: small fakes in the real on-disk layouts, errors, the decode cache."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lipcore.catalog import get_dataset
from lipcore.data import DatasetNotFoundError, data_dir_default, load_data, resolve_spec
from lipcore.data import decode as decode_mod
from lipcore.data.image_folder import HOLDOUT_FRACTION
from lipcore.spec import ExperimentSpec
from tests.fakedata import (
    kwl,
    write_cifar10,
    write_cifar100,
    write_folder,
    write_tiny_imagenet,
)


# ---- CIFAR pickles ----------------------------------------------------------------------------
def test_cifar10_pickles_load_with_labels_classes_and_pixel_layout(tmp_path: Path) -> None:
    ref = write_cifar10(tmp_path)
    data = load_data(kwl("cifar10", train_batch_size=4, test_batch_size=5), tmp_path)
    assert data.classes[:3] == ["airplane", "automobile", "bird"] and len(data.classes) == 10
    assert (data.train_size, data.test_size) == (30, 7)
    assert torch.equal(data._train_x, torch.from_numpy(ref["x"]).reshape(-1, 3, 32, 32))
    # row-major planes: byte 1024 * c + 32 * h + w is pixel (c, h, w)
    assert data._train_x[2, 1, 3, 5] == ref["x"][2, 1024 + 32 * 3 + 5]
    assert data._train_y.tolist() == ref["y"] and data._train_y.dtype == torch.int64
    assert data.mean == get_dataset("cifar10").mean and data.std == (1.0, 1.0, 1.0)  # not normalized
    x, y = data.test_pixels(3)
    expected = torch.from_numpy(ref["xt"][:3]).reshape(3, 3, 32, 32).float()
    assert x.shape == (3, 3, 32, 32) and torch.equal(x * 255, expected)
    assert y.tolist() == ref["yt"][:3]
    xb, yb = next(iter(data.test_batches()))
    assert xb.shape == (5, 3, 32, 32) and torch.allclose(xb, data.normalize(data.test_pixels(5)[0]))
    normed = load_data(kwl("cifar10", normalized=True), tmp_path)
    assert normed.std == get_dataset("cifar10").std


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    ref = write_cifar100(tmp_path)
    data = load_data(kwl("cifar100", train_batch_size=4), tmp_path)
    assert len(data.classes) == 100 and data.classes[7] == "c007"
    assert data._train_y.tolist() == ref["y"] and data._test_y.tolist() == ref["yt"]
    assert data._train_x.shape == (12, 3, 32, 32) and data.steps_per_epoch() == 3


def test_cifar_reader_refuses_pickles_that_name_other_globals(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    evil = pickle.dumps({b"data": os.getcwd, b"labels": []}, protocol=2)  # names posix.getcwd
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(evil)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_data(kwl("cifar10"), tmp_path)


# ---- Tiny ImageNet ----------------------------------------------------------------------------
def test_tiny_imagenet_tree_loads_with_sorted_wnids_and_val_annotations(tmp_path: Path) -> None:
    root = write_tiny_imagenet(tmp_path)
    data = load_data(ExperimentSpec(model="KWL", dataset="tiny_imagenet", train_batch_size=4), tmp_path)
    assert data.classes == ["n01", "n02", "n03"]
    assert data._train_x.shape == (9, 3, 64, 64) and data._train_y.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert data._test_y.tolist() == [1, 2, 0, 1]  # val_0..3 -> n02, n03, n01, n02
    gray = data._train_x[0]  # n01_0 was written as a grayscale JPEG
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    ref = np.asarray(Image.open(root / "val" / "images" / "val_1.JPEG").convert("RGB")).transpose(2, 0, 1)
    assert torch.equal(data._test_x[1], torch.from_numpy(ref.copy()))
    assert data.mean == get_dataset("tiny_imagenet").mean


@pytest.mark.parametrize(
    "dataset, folder",
    [
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("tiny_imagenet", "tiny-imagenet-200"),
    ],
)
def test_missing_data_raises_naming_the_directory_without_downloading(
    tmp_path: Path, dataset: str, folder: str
) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        load_data(kwl(dataset), tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / folder) in message and "download=True" in message
    assert "expected layout" in message
    assert isinstance(err.value, FileNotFoundError) and not any(tmp_path.iterdir())


def test_download_fetches_checks_md5_and_unpacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No internet here: a file:// URL stands in for the official one, through the same urllib path.
    import hashlib
    import tarfile

    from lipcore.data.download import SOURCES, Source

    write_cifar10(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(SOURCES, "cifar10", Source(archive.as_uri(), "0" * 32, "cifar-10-batches-py"))
    with pytest.raises(OSError, match="md5"):
        load_data(kwl("cifar10"), tmp_path / "data", download=True)
    assert not (tmp_path / "data" / "cifar-10-batches-py").exists()
    monkeypatch.setitem(SOURCES, "cifar10", Source(archive.as_uri(), md5, "cifar-10-batches-py"))
    data = load_data(kwl("cifar10"), tmp_path / "data", download=True)
    assert data.train_size == 30 and (tmp_path / "data" / "cifar-10-python.tar.gz").is_file()


# ---- image folders ----------------------------------------------------------------------------
def test_image_folder_with_test_split_resolves_and_loads(tmp_path: Path) -> None:
    write_folder(tmp_path / "mine", {"dog": 5, "cat": 4}, test={"cat": 2, "dog": 1})
    (tmp_path / "mine" / "train" / "cat" / "notes.txt").write_text("not an image")
    spec = kwl("image_folder", data_path="mine", train_batch_size=3)
    assert spec.resolved is False
    resolved = resolve_spec(spec, tmp_path)
    assert (resolved.in_channels, resolved.img_size, resolved.num_classes) == (3, 32, 2)
    data = load_data(spec, tmp_path)
    assert data.spec == resolved and data.classes == ["cat", "dog"]
    assert data._train_y.tolist() == [0] * 4 + [1] * 5 and data._test_y.tolist() == [0, 0, 1]
    # PNG pixels are exact; RGBA and grayscale became RGB
    png = np.asarray(Image.open(tmp_path / "mine/train/cat/0000.png")).transpose(2, 0, 1)
    assert torch.equal(data._train_x[0], torch.from_numpy(png.copy()))
    gray = data._train_x[3]  # cat/0003.jpeg, grayscale
    assert torch.equal(gray[0], gray[2])
    # the mean is the training images' own, the std applies only with `normalized`
    pix = data._train_x.double() / 255
    assert np.allclose(data.mean, pix.mean(dim=(0, 2, 3)).numpy())
    assert data.std == (1.0, 1.0, 1.0)
    normed = load_data(spec.model_copy(update={"normalized": True}), tmp_path)
    pix_std = pix.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1, unbiased=False)
    assert np.allclose(normed.std, pix_std.numpy())
    # an absolute data_path works as well
    absolute = spec.model_copy(update={"data_path": str(tmp_path / "mine")})
    assert load_data(absolute, tmp_path / "elsewhere").train_size == 9


def test_image_folder_without_test_split_holds_out_a_fixed_tenth(tmp_path: Path) -> None:
    write_folder(tmp_path / "f", {"a": 20, "b": 30, "c": 1}, size=64)
    spec = kwl("image_folder", data_path="f", train_batch_size=8)
    data = load_data(spec, tmp_path)
    assert data.spec.img_size == 64 and data._train_x.shape[1:] == (3, 64, 64)
    assert data._test_y.tolist() == [0] * 2 + [1] * 3  # round(10%) per class; none of a single image
    assert data.train_size == 51 - 5
    other = load_data(spec.model_copy(update={"seed": 99}), tmp_path)
    assert torch.equal(other._test_x, data._test_x), "the split must not depend on spec.seed"
    assert HOLDOUT_FRACTION == 0.1


@pytest.mark.parametrize(
    "sizes, bad",
    [
        ([(32, 32), (32, 32), (48, 48)], "0002"),  # a size that is not allowed
        ([(64, 64), (32, 32), (64, 64)], "0001"),  # mixed allowed sizes
        ([(32, 64), (32, 32)], "0000"),  # not square
    ],
)
def test_bad_image_sizes_raise_naming_the_file_and_allowed_sizes(
    tmp_path: Path, sizes: list[tuple[int, int]], bad: str
) -> None:
    for i, (w, h) in enumerate(sizes):
        path = tmp_path / "f" / "train" / "x" / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h)).save(path)
    spec = kwl("image_folder", data_path="f", train_batch_size=1)
    with pytest.raises(ValueError, match=r"32x32 or 64x64") as err:
        resolve_spec(spec, tmp_path)
    assert f"{bad}.png" in str(err.value)
    with pytest.raises(ValueError, match=r"32x32 or 64x64") as err:
        load_data(spec, tmp_path)
    assert f"{bad}.png" in str(err.value)


def test_image_folder_missing_or_malformed(tmp_path: Path) -> None:
    spec = kwl("image_folder", data_path="nowhere")
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "nowhere" / "train")) as err:
        resolve_spec(spec, tmp_path)
    assert "train/<class>/" in str(err.value)
    with pytest.raises(DatasetNotFoundError):
        load_data(spec, tmp_path)
    write_folder(tmp_path / "one", {"only": 3})
    with pytest.raises(ValueError, match="at least 2 classes"):
        resolve_spec(kwl("image_folder", data_path="one"), tmp_path)
    write_folder(tmp_path / "two", {"a": 3, "b": 3}, test={"zebra": 1})
    with pytest.raises(ValueError, match="zebra"):
        resolve_spec(kwl("image_folder", data_path="two"), tmp_path)
    write_folder(tmp_path / "three", {"a": 3, "b": 3})
    with pytest.raises(ValueError, match="num_classes=5 contradicts"):
        resolve_spec(kwl("image_folder", data_path="three", num_classes=5), tmp_path)


def test_decoded_images_are_cached_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_folder(tmp_path / "f", {"a": 6, "b": 6})
    spec = kwl("image_folder", data_path="f", train_batch_size=4)
    first = load_data(spec, tmp_path)
    cache = tmp_path / ".lbdn-cache"
    assert len(list(cache.glob("*.npy"))) == 1 and len(list(cache.glob("*.json"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(decode_mod, "decode_files", no_decoding)
    monkeypatch.setattr(decode_mod, "common_size", no_decoding)  # headers are not read either
    second = load_data(spec, tmp_path)
    assert torch.equal(second._train_x, first._train_x) and second.mean == first.mean
    assert resolve_spec(spec, tmp_path).img_size == 32
    # touching a file changes the file-list key: the stale entry is not used
    os.utime(tmp_path / "f/train/a/0000.png", ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded again"):
        load_data(spec, tmp_path)


def test_data_dir_default_and_light_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LBDN_DATA_DIR", "/srv/lbdn-data")
    assert data_dir_default() == Path("/srv/lbdn-data")
    monkeypatch.delenv("LBDN_DATA_DIR")
    assert data_dir_default() == Path("data")
    spec = kwl("cifar10")
    assert resolve_spec(spec, "/nonexistent") is spec
    code = "import sys, lipcore.data, lipcore.data.decode; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)

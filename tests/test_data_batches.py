"""lipcore.data batching: square wave, augmentation, label alignment, resumable epoch order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lipcore.data import load_data
from lipcore.data.augment import PAD, paper_augmentation
from lipcore.data.square_wave import square_wave_target
from lipcore.spec import ExperimentSpec
from tests.fakedata import _image, kwl, write_folder


# ---- square wave ------------------------------------------------------------------------------
def test_square_wave_matches_the_paper_definition_and_is_seeded() -> None:
    spec = ExperimentSpec(model="Toy", layer="Sandwich")
    before = torch.get_rng_state()
    data = load_data(spec)
    assert torch.equal(torch.get_rng_state(), before), "loading must not touch the global RNG"
    x, y = data._train_x, data._train_y
    assert x.shape == y.shape == (300, 1) and x.dtype == y.dtype == torch.float32
    assert x.min() >= -2 and x.max() <= 2 and x.std() > 0.9  # uniform on [-2, 2]: std 1.15
    expected = torch.tensor([1.0 if (v <= -1 or 0 < v <= 1) else 0.0 for v in x.flatten().tolist()])
    assert torch.equal(y.flatten(), expected)
    xt, yt = data.test_pixels()
    assert torch.equal(xt.flatten(), torch.linspace(-2, 2, 200)) and torch.equal(yt, square_wave_target(xt))
    assert (data.classes, data.mean, data.std) == ([], (0.0,), (1.0,))
    assert torch.equal(load_data(spec)._train_x, x)
    assert not torch.equal(load_data(spec.model_copy(update={"seed": 7}))._train_x, x)
    # paper batch sizes 50/200; no drop_last for the toy (300 / 50 = 6)
    assert data.steps_per_epoch() == 6
    batches = list(data.train_batches(0))
    assert [b[0].shape for b in batches] == [(50, 1)] * 6
    seen = torch.cat([b[0] for b in batches]).flatten().sort().values
    assert torch.equal(seen, x.flatten().sort().values)  # a permutation of the training set
    xs, ys = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert torch.equal(ys, square_wave_target(xs))
    ((tx, ty),) = list(data.test_batches())
    assert tx.shape == (200, 1) and torch.equal(tx, xt)


# ---- augmentation and batching ----------------------------------------------------------------
def test_crop_and_flip_really_happen() -> None:
    torch.manual_seed(1)
    aug = paper_augmentation(32)
    img = torch.rand(1, 3, 32, 32).expand(64, -1, -1, -1).contiguous()
    cropped = aug[0](img)
    padded = torch.nn.functional.pad(img[:1], (PAD,) * 4, mode="reflect")[0]
    shifts = set()
    for out in cropped:  # every output is a 32x32 window of the reflect-padded image
        hits = [
            (i, j)
            for i in range(2 * PAD + 1)
            for j in range(2 * PAD + 1)
            if torch.equal(out, padded[:, i : i + 32, j : j + 32])
        ]
        assert hits
        shifts.add(hits[0])
    assert len(shifts) > 10
    flipped = aug[1](img)
    is_flip = [torch.equal(o, img[0].flip(-1)) for o in flipped]
    is_same = [torch.equal(o, img[0]) for o in flipped]
    assert all(f or s for f, s in zip(is_flip, is_same)) and 10 < sum(is_flip) < 54


def test_train_batches_are_augmented_normalised_and_keep_labels(tmp_path: Path) -> None:
    # constant gray images: crop, flip, contrast, saturation and hue keep them; brightness scales by 0.9-1.1
    for c, value in enumerate((30, 120, 220)):
        for i in range(8):
            _image(tmp_path / "g" / "train" / f"c{c}" / f"{i}.png", 32, value=value)
            _image(tmp_path / "g" / "test" / f"c{c}" / f"{i}.png", 32, value=value)
    data = load_data(kwl("image_folder", data_path="g", train_batch_size=6, normalized=True), tmp_path)
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    assert data.steps_per_epoch() == 4
    for x, y in data.train_batches(0):
        assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        pixels = x * std + mean
        base = torch.tensor([30.0, 120.0, 220.0])[y].view(-1, 1, 1, 1) / 255
        assert (pixels >= base * 0.9 - 1e-5).all() and (pixels <= base * 1.1 + 1e-5).all()
    # random images: the output is in the normalised [0, 1] range and differs from the input
    write_folder(tmp_path / "r", {"a": 8, "b": 8})
    data = load_data(kwl("image_folder", data_path="r", train_batch_size=14), tmp_path)
    x, y = next(data.train_batches(0))
    pixels = x + torch.tensor(data.mean).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    order = data.epoch_order(0)[:14]
    assert torch.equal(y, data._train_y[order])
    assert not torch.allclose(pixels, data._train_x[order].float() / 255)


def test_resumed_epoch_yields_exactly_the_remaining_batches(tmp_path: Path) -> None:
    write_folder(tmp_path / "f", {"a": 10, "b": 10})
    data = load_data(kwl("image_folder", data_path="f", train_batch_size=4), tmp_path)
    steps = data.steps_per_epoch()
    assert steps == 18 // 4  # drop_last: 20 images - 2 held out = 18
    torch.manual_seed(5)
    full, states = [], []
    it = data.train_batches(3)
    for _ in range(steps):
        states.append(torch.get_rng_state())  # what a checkpoint after the previous step holds
        full.append(next(it))
    for k in (1, steps - 1, steps):
        torch.set_rng_state(states[k] if k < steps else torch.get_rng_state())
        resumed = list(data.train_batches(3, start_step=k))
        assert len(resumed) == steps - k
        for (x1, y1), (x2, y2) in zip(full[k:], resumed):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # the order is a function of (seed, epoch) only, never of the global RNG
    torch.manual_seed(123)
    assert torch.equal(data.epoch_order(3), data.epoch_order(3))
    assert not torch.equal(data.epoch_order(3), data.epoch_order(4))
    assert sorted(data.epoch_order(3).tolist()) == list(range(data.train_size))
    other_seed = load_data(kwl("image_folder", data_path="f", train_batch_size=4, seed=1), tmp_path)
    assert not torch.equal(other_seed.epoch_order(3), data.epoch_order(3))
    with pytest.raises(ValueError, match="start_step"):
        next(data.train_batches(0, start_step=steps + 1))


def test_too_few_images_for_one_batch_is_a_clear_error(tmp_path: Path) -> None:
    write_folder(tmp_path / "f", {"a": 3, "b": 3})
    data = load_data(kwl("image_folder", data_path="f"), tmp_path)  # train_batch_size 256
    with pytest.raises(ValueError, match="fewer than train_batch_size=256"):
        data.steps_per_epoch()
    assert data.test_pixels()[0].shape == (2, 3, 32, 32)  # evaluation still works

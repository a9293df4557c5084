"""Training: the paper's schedule, exact resumption after a stop or a crash, safetensors checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lipcore.checkpoint import CheckpointError, load_model, load_train_state
from lipcore.rundir import CHECKPOINT, METRICS, MODEL, SPEC, SUMMARY
from lipcore.spec import ExperimentSpec
from lipcore.train import TrainHooks, lr_at, train
from tests.fakedata import write_folder


def test_learning_rate_schedule_is_the_papers() -> None:
    assert [lr_at(t, 100, 0.01) for t in (0, 20, 40, 60, 80, 90, 100)] == pytest.approx(
        [0, 0.005, 0.01, 0.01 - 0.0095 / 2, 0.0005, 0.00025, 0]
    )
    # knots use integer division, as main.py: 2 epochs -> 0 -> lr at epoch 0 (2*2//5 = 0)
    assert lr_at(0.5, 7, 1.0) == pytest.approx(0.5 / (7 * 2 // 5))


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return dict(load_model(run_dir / MODEL).model.state_dict())


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def strip_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in rows]


class Crash(Exception):
    pass


def crash_at(epoch: int, step: int) -> TrainHooks:
    def on_progress(p) -> None:
        if (p.epoch, p.step) == (epoch, step):
            raise Crash  # the process dies here: nothing after the last checkpoint is saved

    return TrainHooks(on_progress=on_progress)


def stop_at(epoch: int, step: int) -> TrainHooks:
    seen = {}

    def on_progress(p) -> None:
        seen["at"] = (p.epoch, p.step)

    return TrainHooks(on_progress=on_progress, should_stop=lambda: seen.get("at") == (epoch, step))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("data")
    write_folder(data / "shapes", {"a": 16, "b": 16, "c": 16}, size=32, test={"a": 3, "b": 3, "c": 3})
    return data


IMAGE_SPEC = dict(
    model="KWL",
    layer="Sandwich",
    scale="small",
    dataset="image_folder",
    data_path="shapes",
    loss="xent",
    epochs=3,
    train_batch_size=16,
    test_batch_size=16,
    cert_acc=True,
    gamma=2.0,
)


@pytest.mark.slow  # seconds to a minute each on 2 cores: make test runs it, make test-fast not
@pytest.mark.parametrize("how", ["stop_mid_epoch", "crash_mid_epoch", "stop_at_epoch_end"])
def test_resumed_image_run_ends_with_identical_weights(folder: Path, tmp_path: Path, how: str) -> None:
    """Augmentation, shuffling and Adam state all continue exactly (3 steps per epoch)."""
    spec = ExperimentSpec(**IMAGE_SPEC)
    full = train(spec, tmp_path / "full", data_dir=folder, lipschitz_restarts=0)
    assert full.status == "completed" and full.resumed_from is None
    part = tmp_path / "part"
    if how == "crash_mid_epoch":
        with pytest.raises(Crash):
            train(spec, part, data_dir=folder, hooks=crash_at(2, 2), lipschitz_restarts=0)
        expect_from = {"epoch": 1, "step": 0}  # the last checkpoint: end of epoch 1
    else:
        epoch, step = (2, 2) if how == "stop_mid_epoch" else (2, 3)
        stopped = train(spec, part, data_dir=folder, hooks=stop_at(epoch, step), lipschitz_restarts=0)
        assert stopped.status == "stopped"
        expect_from = {"epoch": 1, "step": step}
    resumed = train(spec, part, data_dir=folder, lipschitz_restarts=0)
    assert resumed.status == "completed"
    assert resumed.resumed_from == expect_from
    assert_same_weights(full.run_dir, part)
    assert full.summary["lipschitz_bound"]["verified"] <= spec.gamma * (1 + 1e-9)
    assert strip_times(resumed.metrics) == strip_times(full.metrics)
    assert strip_times(json.loads((part / METRICS).read_text())) == strip_times(full.metrics)


def test_toy_run_writes_the_run_directory(tmp_path: Path) -> None:
    spec = ExperimentSpec(model="Toy", layer="Sandwich", gamma=5.0, epochs=6)
    epochs_seen = []
    train(spec, tmp_path, hooks=TrainHooks(on_epoch=lambda row: epochs_seen.append(row["epoch"])), lipschitz_restarts=1)
    assert epochs_seen == list(range(1, 7))
    for name in (SPEC, METRICS, MODEL, CHECKPOINT, SUMMARY, "log.txt"):
        assert (tmp_path / name).is_file(), name
    assert ExperimentSpec.model_validate_json((tmp_path / SPEC).read_text()) == spec
    rows = json.loads((tmp_path / METRICS).read_text())
    assert len(rows) == 6 and rows[-1]["lr"] == 0.0 and rows[0]["train_acc"] is None
    summary = json.loads((tmp_path / SUMMARY).read_text())
    assert 0 < summary["lipschitz_lower_bound"] <= 5.0 * (1 + 1e-4)
    assert summary["tightness"] == pytest.approx(summary["lipschitz_lower_bound"] / 5.0)
    assert summary["lipschitz_bound"]["gamma"] == 5.0
    assert summary["lipschitz_lower_bound"] <= summary["lipschitz_bound"]["verified"] <= 5.0 * (1 + 1e-9)
    state = load_train_state(tmp_path / CHECKPOINT)
    assert state.position["epoch"] == 6 and len(state.history) == 6


def test_an_epoch_checkpointed_but_not_reported_is_reported_on_resume(tmp_path: Path) -> None:
    """A worker killed after epoch 3's checkpoint but before its report: the resumed run reports
    epoch 3 (the service's CI caught a resumed job whose metrics skipped an epoch)."""
    spec = ExperimentSpec(model="Toy", layer="Sandwich", gamma=2.0, epochs=5)

    class Killed(Exception):
        pass

    seen: list[int] = []

    def report_until_3(row: dict) -> None:
        if row["epoch"] == 3:
            raise Killed  # the checkpoint of epoch 3 is on disk by now
        seen.append(row["epoch"])

    with pytest.raises(Killed):
        train(spec, tmp_path, hooks=TrainHooks(on_epoch=report_until_3), lipschitz_restarts=0)
    assert load_train_state(tmp_path / CHECKPOINT).position["epoch"] == 3
    resumed = train(spec, tmp_path, hooks=TrainHooks(on_epoch=lambda r: seen.append(r["epoch"])), lipschitz_restarts=0)
    assert resumed.resumed_from == {"epoch": 3, "step": 0}
    assert seen == [1, 2, 3, 4, 5]


def test_resume_refuses_a_different_experiment(tmp_path: Path) -> None:
    train(ExperimentSpec(model="Toy", layer="Aol", gamma=1.0, epochs=1), tmp_path, lipschitz_restarts=0)
    with pytest.raises(ValueError, match="already holds a different experiment"):
        train(ExperimentSpec(model="Toy", layer="Aol", gamma=1.0, epochs=2), tmp_path, lipschitz_restarts=0)
    # without resume it starts afresh
    fresh = train(
        ExperimentSpec(model="Toy", layer="Aol", gamma=1.0, epochs=2), tmp_path, resume=False, lipschitz_restarts=0
    )
    assert fresh.resumed_from is None and len(fresh.metrics) == 2


def test_checkpoints_are_safetensors_only(tmp_path: Path) -> None:
    spec = ExperimentSpec(model="Toy", layer="Orthogon", gamma=2.0, epochs=1)
    train(spec, tmp_path, lipschitz_restarts=0)
    loaded = load_model(tmp_path / MODEL)
    assert loaded.spec == spec and not loaded.model.training
    x = torch.linspace(-2, 2, 7)[:, None]
    # a pickle in its place is refused, never unpickled
    torch.save(loaded.model.state_dict(), tmp_path / "evil.safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(tmp_path / "evil.safetensors")
    with pytest.raises(CheckpointError, match="not an lbdn-model/1 file"):
        load_model(tmp_path / CHECKPOINT)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_model(tmp_path / "missing.safetensors")
    assert loaded.model(x).shape == (7, 1)

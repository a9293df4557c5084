"""One job on several devices (lipcore.distributed): DDP on CPU with gloo and 2 ranks.

Against the one-process run of the same spec (same global batch and seed) the per-epoch losses
agree to float tolerance (the ranks' partial sums are grouped differently; see the module's
docstring); a rank killed mid-run restarts the run from its checkpoint and it ends with every epoch
once and the weights of an uninterrupted 2-rank run; certificates of a DDP-trained model are the
one-device computation's.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from lipcore.checkpoint import load_model
from lipcore.distributed import train_distributed
from lipcore.rundir import METRICS, MODEL, SUMMARY
from lipcore.spec import ExperimentSpec
from lipcore.train import PAPER_RADII, TrainHooks, _test_pass, cert_key, train
from tests.fakedata import write_folder

pytestmark = pytest.mark.slow  # each 2-rank run starts two Python processes (~5-15 s here)

TOY = ExperimentSpec(model="Toy", layer="Sandwich", gamma=2.0, epochs=3)


class RecordEpochs:
    """Rank 0's hooks (picklable: made in the rank): each reported epoch appended to a file; at
    `kill_at` (once, a marker file says so) SIGKILL the other rank, as a lost process."""

    def __init__(self, path: Path, kill_at: int | None = None) -> None:
        self.path, self.kill_at = path, kill_at

    def __call__(self) -> TrainHooks:
        def on_epoch(row: dict) -> None:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            marker = self.path.with_suffix(".killed")
            if row["epoch"] == self.kill_at and not marker.exists():
                marker.touch()
                os.kill(_sibling(), signal.SIGKILL)

        return TrainHooks(on_epoch=on_epoch)


def _sibling() -> int:
    """The other rank: a child of this rank's parent, not this process (Linux /proc)."""
    me, parent = os.getpid(), os.getppid()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != me:
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                cmd = (entry / "cmdline").read_bytes()
                if b"spawn_main" in cmd:  # a rank, not the resource tracker
                    return int(entry.name)
    raise AssertionError("the other rank was not found")


def reported(path: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()]


def strip_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in rows]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, Path]:
    """An uninterrupted 2-rank Toy run: (run dir, its reported epochs)."""
    root = tmp_path_factory.mktemp("ddp")
    result = train_distributed(
        TOY,
        root / "run",
        devices=["cpu", "cpu"],
        hooks_factory=RecordEpochs(root / "epochs.jsonl"),
        lipschitz_restarts=0,
    )
    assert result.status == "completed" and result.resumed_from is None
    return result.run_dir, root / "epochs.jsonl"


def test_two_ranks_train_like_one_process(two_ranks, tmp_path: Path) -> None:
    run_dir, epochs = two_ranks
    assert reported(epochs) == [1, 2, 3]  # rank 0 alone reports, every epoch once
    one = train(TOY, tmp_path / "one", lipschitz_restarts=0)
    ddp = json.loads((run_dir / METRICS).read_text())
    assert [r["epoch"] for r in ddp] == [1, 2, 3]
    for a, b in zip(one.metrics, ddp, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)
    summary = json.loads((run_dir / SUMMARY).read_text())
    assert summary["epochs"] == 3 and summary["lipschitz_bound"]["verified"] <= TOY.gamma * (1 + 1e-9)
    assert not (run_dir / ".rank1" / MODEL).exists()  # only rank 0 writes the run directory's files


def test_a_killed_rank_restarts_the_run_from_its_checkpoint(two_ranks, tmp_path: Path) -> None:
    result = train_distributed(
        TOY,
        tmp_path / "run",
        devices=["cpu", "cpu"],
        hooks_factory=RecordEpochs(tmp_path / "epochs.jsonl", kill_at=2),
        lipschitz_restarts=0,
        max_restarts=1,
    )
    assert (tmp_path / "epochs.killed").exists()
    assert result.status == "completed" and result.resumed_from == {"epoch": 2, "step": 0}
    # a resumed run reports its checkpoint's last epoch again (at least once; the store keeps one row)
    assert sorted(set(reported(tmp_path / "epochs.jsonl"))) == [1, 2, 3]
    rows = json.loads((tmp_path / "run" / METRICS).read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    uninterrupted = json.loads((two_ranks[0] / METRICS).read_text())
    assert strip_times(rows) == strip_times(uninterrupted)  # exact resume
    a, b = load_model(tmp_path / "run" / MODEL).model, load_model(two_ranks[0] / MODEL).model
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), k


def test_certificates_of_a_ddp_model_are_the_one_device_computation(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_folder(data_dir / "shapes", {"a": 8, "b": 8}, size=32, test={"a": 4, "b": 4})
    spec = ExperimentSpec(
        model="KWL", layer="Sandwich", scale="small", dataset="image_folder", data_path="shapes", loss="xent",
        epochs=1, train_batch_size=8, test_batch_size=8, cert_acc=True, gamma=2.0,
    )  # fmt: skip
    result = train_distributed(spec, tmp_path / "run", devices=["cpu", "cpu"], data_dir=data_dir, lipschitz_restarts=0)
    last = result.metrics[-1]
    from lipcore.data import load_data
    from lipcore.losses import build_loss

    loaded = load_model(tmp_path / "run" / MODEL)
    resolved = result.spec
    assert resolved is not None
    again = _test_pass(loaded.model, load_data(resolved, data_dir), build_loss(resolved), resolved)
    for eps in PAPER_RADII:
        assert again[cert_key(eps)] == last[cert_key(eps)]

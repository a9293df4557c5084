"""A training job on its devices: lipcore.train in this process for one device, lipcore.distributed
(DDP, one spawned rank per device, rank 0 reporting) for several.

Rank 0 is another process: it reports through a Reporter of its own (same job, same lease owner),
made by `RankReporter`, a picklable factory; this process keeps the lease's heartbeat.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from core.settings import Settings
from lipcore.rundir import SUMMARY
from lipcore.spec import ExperimentSpec
from lipcore.train import TrainHooks, TrainResult
from worker import devices
from worker.artifacts import checkpoint_pusher
from worker.reporting import LeaseLost, Reporter


def hooks_of(reporter: Reporter, stopping: Callable[[], bool]) -> TrainHooks:
    return TrainHooks(
        on_progress=reporter.progress,
        on_epoch=reporter.epoch,
        on_log=reporter.log,
        on_checkpoint=checkpoint_pusher(reporter.artifacts, reporter.job_id, reporter.still_owned),
        should_stop=lambda: stopping() or reporter.should_stop(),
        on_resume=lambda position: reporter.update(resumed_from=position),  # visible while it runs
    )


class RankReporter:
    """Makes rank 0's TrainHooks in the rank's process (pickled there by torch.multiprocessing)."""

    def __init__(self, settings: Settings, job_id: str, owner: str) -> None:
        self.settings, self.job_id, self.owner = settings, job_id, owner

    def __call__(self) -> TrainHooks:
        from core.store import make_engine, session_factory

        sessions = session_factory(make_engine(self.settings.db_url))
        return hooks_of(Reporter(sessions, self.job_id, self.owner, self.settings), lambda: False)


def train_on(
    slots: list[str],
    spec: ExperimentSpec,
    settings: Settings,
    job_id: str,
    reporter: Reporter,
    stopping: Callable[[], bool],
) -> TrainResult:
    """Train job `job_id` on `slots`; summary.json and the result say where it ran."""
    from lipcore.train import train

    run_dir = settings.job_dir(job_id)
    common: dict[str, Any] = {"data_dir": settings.datasets_dir, "lipschitz_restarts": settings.lipschitz_restarts}
    if len(slots) == 1:
        result = train(
            spec, run_dir, device=devices.torch_device(slots[0]), hooks=hooks_of(reporter, stopping), **common
        )
    else:
        result = _train_ddp(slots, spec, settings, job_id, reporter, stopping, common)
    if result.status == "completed":
        where = devices.placement(slots)
        result.summary["placement"] = where
        summary = run_dir / SUMMARY
        if summary.exists():
            from lipcore.rundir import write_json

            write_json(summary, {**json.loads(summary.read_text()), "placement": where})
    return result


@contextmanager
def _may_have_children() -> Iterator[None]:
    """Let this pool process start the ranks with multiprocessing (torch's launcher), in the
    process state billiard left: billiard marks it daemonic, and multiprocessing refuses children to
    daemonic processes (they could be orphaned; ours cannot: every rank asks the kernel to end it with
    its parent, lipcore.distributed), and its authkey is billiard's type, which refuses to be pickled
    to a spawned child (a stdlib copy of the same bytes is)."""
    from multiprocessing import process

    config = process.current_process()._config  # type: ignore[attr-defined]  # no public way
    saved = dict(config)
    config["daemon"] = False
    config["authkey"] = process.AuthenticationString(bytes(config["authkey"]))  # type: ignore[attr-defined]
    try:
        yield
    finally:
        config.update(saved)


def _train_ddp(
    slots: list[str],
    spec: ExperimentSpec,
    settings: Settings,
    job_id: str,
    reporter: Reporter,
    stopping: Callable[[], bool],
    common: dict[str, Any],
) -> TrainResult:
    import torch

    from lipcore.distributed import DistributedError, train_distributed

    try:
        with _may_have_children():
            return train_distributed(
                spec,
                settings.job_dir(job_id),
                devices=[devices.torch_device(s) for s in slots],
                hooks_factory=RankReporter(settings, job_id, reporter.owner),
                timeout_s=settings.ddp_timeout_s,
                max_restarts=settings.ddp_max_restarts,
                threads=max(1, torch.get_num_threads() // len(slots)),
                should_stop=stopping,
                **common,
            )
    except DistributedError as e:
        if e.kind == "LeaseLost":
            raise LeaseLost(str(e)) from None
        raise

"""What a running job tells the job store: heartbeat, progress, metrics, logs, cancel checks.

Every write is conditional on this worker still holding the job's lease. When the lease is lost
(the job was given to another worker after this one stalled), `LeaseLost` is raised from the next
hook call, which aborts training without writing anything more: the other worker owns the job now.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core.artifacts import ArtifactStore
from core.settings import Settings
from core.states import EventKind, JobState
from core.store import jobs, leases, transaction

log = logging.getLogger("lbdn.worker")


class LeaseLost(RuntimeError):
    """This worker no longer holds the job; it must stop without writing."""


class Heartbeat(threading.Thread):
    """Renews the lease every lease_s / 3; sets `lost` when the renewal is refused."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, owner: str, lease_s: float) -> None:
        super().__init__(name=f"lbdn-heartbeat-{job_id}", daemon=True)
        self.sessions, self.job_id, self.owner, self.lease_s = sessions, job_id, owner, lease_s
        self.lost = threading.Event()
        self._halt = threading.Event()  # not `_stop`: Thread has a method of that name

    def run(self) -> None:
        while not self._halt.wait(self.lease_s / 3):
            try:
                with transaction(self.sessions) as s:
                    if not leases.renew(s, self.job_id, self.owner, self.lease_s):
                        self.lost.set()
                        return
            except Exception as e:
                log.warning("heartbeat of %s failed: %s", self.job_id, e)

    def stop(self) -> None:
        self._halt.set()


class Reporter:
    """The TrainHooks of one job attempt (rate-limited writes to the job store; its files go to
    `artifacts`, LBDN_ARTIFACTS' store unless given)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_id: str,
        owner: str,
        settings: Settings,
        artifacts: ArtifactStore | None = None,
    ) -> None:
        self.sessions, self.job_id, self.owner, self.settings = sessions, job_id, owner, settings
        self.artifacts = artifacts if artifacts is not None else settings.artifact_store()
        self.heartbeat = Heartbeat(sessions, job_id, owner, settings.lease_s)
        self._last_progress = 0.0
        self._last_cancel_check = 0.0
        self._cancel = False
        self.slots: list[str] = ["cpu:0"]  # the devices the job runs on (worker.devices)

    def _owned(self, s: Session, **values: Any) -> None:
        if self.heartbeat.lost.is_set() or not leases.update_owned(s, self.job_id, self.owner, **values):
            raise LeaseLost(f"job {self.job_id} is no longer leased by {self.owner}")

    def progress(self, p: Any) -> None:
        """lipcore.progress.Progress -> progress column + event, at most every progress_interval_s."""
        now = time.monotonic()
        last_step = p.global_step == p.total_steps or p.step == p.steps
        if now - self._last_progress < self.settings.progress_interval_s and not last_step:
            return
        self._last_progress = now
        data = {
            "epoch": p.epoch,
            "epochs": p.epochs,
            "step": p.step,
            "steps": p.steps,
            "fraction": p.global_step / max(p.total_steps, 1),
            "eta_s": p.eta_s,
            "loss": p.loss,
            "lr": p.lr,
        }
        try:
            with transaction(self.sessions) as s:
                self._owned(s, progress={k: data[k] for k in ("epoch", "epochs", "step", "steps", "fraction", "eta_s")})
                jobs.add_event(s, self.job_id, EventKind.progress, data)
        except SQLAlchemyError as e:  # progress is best effort: a database hiccup must not stop training
            log.warning("progress of %s not recorded: %s", self.job_id, e)

    def epoch(self, row: dict[str, Any]) -> None:
        with transaction(self.sessions) as s:
            self._owned(s)
            jobs.record_metrics(s, self.job_id, row)

    def log(self, line: str) -> None:
        try:
            with transaction(self.sessions) as s:
                self._owned(s)
                jobs.add_event(s, self.job_id, EventKind.log, {"line": line})
        except SQLAlchemyError as e:  # the line is in the run's log.txt artifact as well
            log.warning("log line of %s not recorded: %s", self.job_id, e)

    def update(self, **values: Any) -> None:
        with transaction(self.sessions) as s:
            self._owned(s, **values)

    def still_owned(self) -> None:
        """LeaseLost once this worker's heartbeat was refused (no store round trip: called per checkpoint)."""
        if self.heartbeat.lost.is_set():
            raise LeaseLost(f"job {self.job_id} is no longer leased by {self.owner}")

    def should_stop(self) -> bool:
        """True once a cancel was requested (read at most every cancel_poll_s); LeaseLost if lost."""
        self.still_owned()
        now = time.monotonic()
        if not self._cancel and now - self._last_cancel_check >= self.settings.cancel_poll_s:
            self._last_cancel_check = now
            with self.sessions() as s:
                self._cancel = jobs.cancel_requested(s, self.job_id)
        return self._cancel

    def finish(self, status: JobState, **values: Any) -> bool:
        """The job's one final state; False when another worker holds the job by now."""
        with transaction(self.sessions) as s:
            return leases.finish(s, self.job_id, self.owner, status, **values)

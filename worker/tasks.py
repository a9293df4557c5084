"""Celery tasks of the worker process: run a training or evaluation job under a lease.

Loaded only by workers (`include` of worker.queue); lipcore's training code is imported inside the
tasks, so the worker's parent process never initialises torch/CUDA before it forks its pool.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import billiard
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down
from sqlalchemy.orm import Session, sessionmaker

from lipcore.rundir import EVAL, MODEL, write_json
from worker.queue import app
from worker.reaper import PeriodicReaper
from worker.reporting import LeaseLost, Reporter
from worker.settings import get_settings
from worker.store import Job, init_db, jobs, leases, make_engine, session_factory, transaction

log = logging.getLogger("lbdn.worker")
settings = get_settings()
_store: dict[str, Any] = {}
# Set by the worker's main process when it shuts down, and seen by its forked pool children (a
# process-shared event made before the fork): a running job, and one the pool still starts during a
# warm shutdown, checkpoints at its next step and goes back to the queue (leases.release).
SHUTTING_DOWN = billiard.Event()
# Set by SIGTERM in a pool child while a job runs (`lbdn serve` signals the worker's whole process
# group; Celery terminates a task on broker connection loss): that job stops the same way. Reset for
# each job, so a child that lives on after a terminated task runs its next job normally.
_TERMINATED = threading.Event()


_MAIN_STOPPING = [False]  # the same, for jobs of the solo/threads pool in the main process


def _stopping() -> bool:
    return _MAIN_STOPPING[0] or _TERMINATED.is_set() or SHUTTING_DOWN.is_set()


def sessions() -> sessionmaker[Session]:
    """This process's session factory; a forked pool child makes its own engine."""
    if _store.get("pid") != os.getpid():
        if "engine" in _store:
            _store["engine"].dispose(close=False)  # the parent's connections are not ours to close
        engine = make_engine(settings.db_url)
        _store.update(pid=os.getpid(), engine=engine, sessions=session_factory(engine))
    return _store["sessions"]


@app.task(name="lbdn.train", acks_late=True, reject_on_worker_lost=True)
def train_job(job_id: str) -> str:
    return run_job(job_id, _train)


@app.task(name="lbdn.evaluate", acks_late=True, reject_on_worker_lost=True)
def evaluate_job(job_id: str) -> str:
    return run_job(job_id, _evaluate)


def run_job(job_id: str, body: Any) -> str:
    """Take the job's lease and run `body(job, reporter)`; returns the job's final state (or why not)."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    factory = sessions()
    with transaction(factory) as s:
        job = leases.acquire(s, job_id, owner, settings.lease_s)
    if job is None:
        # finished, cancelled, deleted, or running under another worker's live lease (a duplicate)
        log.info("job %s is not runnable here; message dropped", job_id)
        return "skipped"
    reporter = Reporter(factory, job_id, owner, settings)
    reporter.heartbeat.start()
    try:
        with _sigterm_checkpoints():
            status, values = body(job, reporter)
        if status == "cancelled" and _stopping() and _release_for_shutdown(factory, job_id, owner):
            log.info("job %s checkpointed and queued again: the worker is shutting down", job_id)
            return "interrupted"
    except LeaseLost as e:
        log.warning("%s; leaving it to its new worker", e)
        return "lease-lost"
    except Exception as e:  # noqa: BLE001 - any failure of the job is reported on the job
        log.exception("job %s failed", job_id)
        status, values = "failed", {"error": f"{type(e).__name__}: {e}"[:4000]}
    finally:
        reporter.heartbeat.stop()
    if not reporter.finish(status, **values):
        log.warning("job %s was taken over by another worker; its result here is dropped", job_id)
        return "lease-lost"
    return status


@contextmanager
def _sigterm_checkpoints() -> Iterator[None]:
    """In a pool child, while a job runs: SIGTERM asks it to checkpoint and stop at its next step.

    Installed here, not at child start-up: billiard replaces a child's SIGTERM handler with one that
    exits at once (mid-step) after Celery's initializer has run. The main process (solo pool) keeps
    Celery's own handler, which reaches the job through worker_shutting_down.
    """
    from billiard.process import current_process

    if current_process().name == "MainProcess" or threading.current_thread() is not threading.main_thread():
        yield
        return
    _TERMINATED.clear()
    previous = signal.signal(signal.SIGTERM, lambda *_: _TERMINATED.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _release_for_shutdown(factory: Any, job_id: str, owner: str) -> bool:
    """The job stopped because the worker shuts down (not because a user cancelled it): queue it."""
    with transaction(factory) as s:
        return not jobs.cancel_requested(s, job_id) and leases.release(s, job_id, owner)


def _train(job: Job, reporter: Reporter) -> tuple[str, dict[str, Any]]:
    from lipcore.spec import ExperimentSpec
    from lipcore.train import TrainHooks, train

    run_dir = settings.job_dir(job.id)
    hooks = TrainHooks(
        on_progress=reporter.progress,
        on_epoch=reporter.epoch,
        on_log=reporter.log,
        should_stop=lambda: _stopping() or reporter.should_stop(),
        on_resume=lambda position: reporter.update(resumed_from=position),  # visible while it runs
    )
    # resume=True: a job picked up again after its worker died continues from its checkpoint.
    result = train(
        ExperimentSpec.model_validate(job.spec),
        run_dir,
        data_dir=settings.datasets_dir,
        device=settings.device,
        hooks=hooks,
        resume=True,
        lipschitz_restarts=settings.lipschitz_restarts,
    )
    assert result.spec is not None
    values: dict[str, Any] = {"spec": result.spec.model_dump(mode="json")}  # resolved against the data
    if result.resumed_from is not None:
        values["resumed_from"] = result.resumed_from
    if result.status == "stopped":
        return "cancelled", values
    values["result"] = {**result.summary, "classes": result.classes}
    return "succeeded", values


def _evaluate(job: Job, reporter: Reporter) -> tuple[str, dict[str, Any]]:
    from lipcore.evaluate import evaluate_robustness

    model_path = settings.job_dir(job.model_id or "") / MODEL
    if not model_path.is_file():
        return "failed", {"error": f"the model {job.model_id} has no weights file (deleted?)"}
    params = job.params or {}
    out = settings.job_dir(job.id)
    out.mkdir(parents=True, exist_ok=True)
    extra = {"attacks": params["attacks"]} if params.get("attacks") else {}  # version "custom" only
    results = evaluate_robustness(
        model_path,
        data_dir=settings.datasets_dir,
        eps=tuple(params.get("eps", (36, 72, 108))),
        version=params.get("version", "standard"),
        n_examples=params.get("n_examples", 1000),
        device=settings.device,
        on_log=reporter.log,
        should_stop=lambda: _stopping() or reporter.should_stop(),
        on_progress=reporter.progress,  # an "epoch" is one eps, a step one batch of inputs
        state_dir=out,  # AutoAttack's progress per (eps, batch): a job picked up again continues it
        **extra,
    )
    write_json(out / EVAL, results)
    return ("cancelled" if results.get("stopped") else "succeeded"), {"result": results}


# ---- worker process life --------------------------------------------------------------------
_reaper: dict[str, PeriodicReaper] = {}


@worker_ready.connect
def _start_reaper(**_: Any) -> None:
    """In the worker's main process: make tables if needed, then look for lost jobs periodically."""
    settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    init_db(sessions().kw["bind"])
    _reaper["thread"] = PeriodicReaper(sessions(), app, settings)
    _reaper["thread"].start()
    log.info("lbdn worker ready: store %s", settings.db_url.split("@")[-1])


@worker_shutting_down.connect
def _stop_running_jobs(**_: Any) -> None:
    """In the main process, on a warm or cold shutdown (SIGTERM, SIGINT, SIGQUIT): tell the pool
    children, whose running jobs would otherwise go on to their end, and a job of the solo or
    threads pool running in this process."""
    from billiard.process import active_children

    _MAIN_STOPPING[0] = True  # a plain flag: this runs in a signal handler, maybe amid is_set() below
    threading.Thread(target=SHUTTING_DOWN.set, name="lbdn-shutdown", daemon=True).start()
    for child in active_children():
        try:
            os.kill(child.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


@worker_shutdown.connect
def _stop_reaper(**_: Any) -> None:
    if "thread" in _reaper:
        _reaper["thread"].stop()

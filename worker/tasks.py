"""Celery tasks of the worker process: run a training or evaluation job under a lease.

Loaded only by workers (`include` of worker.app.WorkerApp); lipcore's training code is imported
inside the tasks, so the worker's parent process never initialises torch/CUDA before it forks its
pool. Settings reach a task through the TaskContext of the app it runs in (`run_train(context, id)`
and `run_evaluate(context, id)` are the same jobs without Celery, as tests call them).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import billiard
from celery import Task, shared_task
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down
from sqlalchemy.orm import Session, sessionmaker

from core.queue import TASKS
from core.reaper import PeriodicReaper
from core.states import JobKind, JobState
from core.store import Job, init_db, jobs, leases, transaction
from core.submit import missing_dataset
from core.sweep_submit import advance_sweeps
from lipcore.rundir import EVAL, MODEL, write_json
from worker import devices, registry  # noqa: F401  (registry: signal handlers)
from worker.app import context_of
from worker.artifacts import eval_state_pusher, pull_checkpoint, pull_eval_state, save_after_failure, save_run
from worker.context import TaskContext
from worker.reporting import LeaseLost, Reporter

log = logging.getLogger("lbdn.worker")
JobBody = Callable[[TaskContext, Job, Reporter], tuple[JobState, dict[str, Any]]]
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


@shared_task(bind=True, name=TASKS[JobKind.train], acks_late=True, reject_on_worker_lost=True)
def train_job(self: Task, job_id: str) -> str:
    return run_train(context_of(self.app), job_id)


@shared_task(bind=True, name=TASKS[JobKind.evaluate], acks_late=True, reject_on_worker_lost=True)
def evaluate_job(self: Task, job_id: str) -> str:
    return run_evaluate(context_of(self.app), job_id)


def run_train(context: TaskContext, job_id: str) -> str:
    """Run training job `job_id` with `context`'s settings and store; returns run_job's answer."""
    return run_job(context, job_id, _train)


def run_evaluate(context: TaskContext, job_id: str) -> str:
    """Run evaluation job `job_id` with `context`'s settings and store; returns run_job's answer."""
    return run_job(context, job_id, _evaluate)


def run_job(context: TaskContext, job_id: str, body: JobBody) -> str:
    """Take the job's devices (worker.devices) and lease and run `body(context, job, reporter)`;
    returns the job's final state, or why it did not run here: skipped, interrupted (queued again at
    shutdown), lease-lost."""
    settings = context.settings
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    factory = context.sessions()
    with factory() as s:
        asked = jobs.get_job(s, None, job_id)
        count = int((asked.resources or {}).get("devices", 1)) if asked is not None else 1
    try:
        slots = devices.mine(count, settings.device)
    except ValueError as e:  # the API refuses such jobs while the registry knows; a worker may shrink
        with transaction(factory) as s:
            if leases.acquire(
                s, job_id, owner, settings.lease_s, **devices.placement(devices.mine(1, settings.device))
            ):
                leases.finish(s, job_id, owner, JobState.failed, error=str(e))
        return JobState.failed
    with devices.holding(slots):
        return _run_leased(context, job_id, body, owner, slots)


def _run_leased(context: TaskContext, job_id: str, body: JobBody, owner: str, slots: list[str]) -> str:
    settings, factory = context.settings, context.sessions()
    with transaction(factory) as s:
        job = leases.acquire(s, job_id, owner, settings.lease_s, **devices.placement(slots))
    if job is None:
        # finished, cancelled, deleted, or running under another worker's live lease (a duplicate)
        log.info("job %s is not runnable here; message dropped", job_id)
        return "skipped"
    reporter = Reporter(factory, job_id, owner, settings, context.artifacts)
    reporter.slots = slots
    reporter.heartbeat.start()
    try:
        with _sigterm_checkpoints():
            status, values = body(context, job, reporter)
        if status == JobState.cancelled and _stopping() and _release_for_shutdown(factory, job_id, owner):
            log.info("job %s checkpointed and queued again: the worker is shutting down", job_id)
            return "interrupted"
    except LeaseLost as e:
        log.warning("%s; leaving it to its new worker", e)
        return "lease-lost"
    except Exception as e:
        log.exception("job %s failed", job_id)
        status, values = JobState.failed, {"error": f"{type(e).__name__}: {e}"[:4000]}
    finally:
        reporter.heartbeat.stop()
    if not reporter.finish(status, **values):
        log.warning("job %s was taken over by another worker; its result here is dropped", job_id)
        return "lease-lost"
    if status == JobState.succeeded and body is _train:
        _advance_sweep(context, job_id)
    return status


def _advance_sweep(context: TaskContext, job_id: str) -> None:
    """Make the evaluation job of `job_id` if a sweep asks for one (the reaper retries on failure)."""
    try:
        advance_sweeps(context.sessions(), context.queue, context.settings, job_id)
    except Exception:
        log.exception("could not advance the sweep of job %s; the reaper will", job_id)


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


def _release_for_shutdown(factory: sessionmaker[Session], job_id: str, owner: str) -> bool:
    """The job stopped because the worker shuts down (not because a user cancelled it): queue it."""
    with transaction(factory) as s:
        return not jobs.cancel_requested(s, job_id) and leases.release(s, job_id, owner)


def _train(context: TaskContext, job: Job, reporter: Reporter) -> tuple[JobState, dict[str, Any]]:
    from lipcore.spec import ExperimentSpec
    from worker.multi import train_on

    settings, store = context.settings, reporter.artifacts
    if why := missing_dataset(job.spec.get("dataset"), settings.datasets_dir):
        return JobState.failed, {"error": why}  # the directory and the command, not a library call
    run_dir = settings.job_dir(job.id)
    # resume=True inside: a job picked up again after its worker died continues from its checkpoint,
    # the store's (worker.artifacts), wherever it was written
    pull_checkpoint(store, job.id, run_dir)
    try:
        result = train_on(
            reporter.slots, ExperimentSpec.model_validate(job.spec), settings, job.id, reporter, _stopping
        )
    except LeaseLost:
        raise  # another worker has the job and writes its files
    except Exception:
        save_after_failure(store, job.id, run_dir)
        raise
    save_run(store, job.id, run_dir, finished=result.status == "completed")
    assert result.spec is not None
    values: dict[str, Any] = {"spec": result.spec.model_dump(mode="json")}  # resolved against the data
    if result.resumed_from is not None:
        values["resumed_from"] = result.resumed_from
    if result.status == "stopped":
        return JobState.cancelled, values
    values["result"] = {**result.summary, "classes": result.classes}
    return JobState.succeeded, values


def _evaluate(context: TaskContext, job: Job, reporter: Reporter) -> tuple[JobState, dict[str, Any]]:
    from lipcore.evaluate import evaluate_robustness

    settings, store = context.settings, reporter.artifacts
    try:  # with S3, downloaded once into this host's cache
        model_path = store.local_path(job.model_id or "", MODEL)
    except (FileNotFoundError, ValueError):  # ValueError: no model id
        return JobState.failed, {"error": f"the model {job.model_id} has no weights file (deleted?)"}
    if why := missing_dataset((job.spec or {}).get("dataset"), settings.datasets_dir):
        return JobState.failed, {"error": why}
    params = job.params or {}
    out = settings.job_dir(job.id)
    out.mkdir(parents=True, exist_ok=True)
    if pulled := pull_eval_state(store, job.id, out):  # an earlier attempt's batches, on any host
        reporter.log(f"continuing after {pulled} batch(es) of inputs an earlier attempt attacked")
    push_state = eval_state_pusher(store, job.id, out, reporter.still_owned)

    def on_progress(p: Any) -> None:  # after each batch of inputs: stored before it is reported
        push_state()
        reporter.progress(p)

    extra = {"attacks": params["attacks"]} if params.get("attacks") else {}  # version "custom" only
    results = evaluate_robustness(
        model_path,
        data_dir=settings.datasets_dir,
        eps=tuple(params.get("eps", (36, 72, 108))),
        version=params.get("version", "standard"),
        n_examples=params.get("n_examples", 1000),
        device=devices.torch_device(reporter.slots[0]),
        on_log=reporter.log,
        should_stop=lambda: _stopping() or reporter.should_stop(),
        on_progress=on_progress,  # an "epoch" is one eps, a step one batch of inputs
        state_dir=out,  # each finished (eps, batch): a job picked up again attacks only the rest
        **extra,
    )
    write_json(out / EVAL, results)
    save_run(store, job.id, out, finished=not results.get("stopped"))
    return (JobState.cancelled if results.get("stopped") else JobState.succeeded), {"result": results}


# ---- worker process life --------------------------------------------------------------------
_reaper: dict[str, PeriodicReaper] = {}


@worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    """In the worker's main process: bring the store's schema up to date if needed, then look for
    lost jobs periodically. `sender` is the worker's consumer; its app carries the context."""
    context = context_of(sender.app)
    context.settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    init_db(context.engine)
    _reaper["thread"] = PeriodicReaper(context.sessions(), context.queue, context.settings)
    _reaper["thread"].start()
    log.info("lbdn worker ready: store %s", context.settings.db_url.split("@")[-1])


@worker_shutting_down.connect
def _stop_running_jobs(**_: Any) -> None:
    """In the main process, on a warm or cold shutdown (SIGTERM, SIGINT, SIGQUIT): tell the pool
    children, whose running jobs would otherwise go on to their end, and a job of the solo or
    threads pool running in this process."""
    from billiard.process import active_children

    _MAIN_STOPPING[0] = True  # a plain flag: this runs in a signal handler, maybe amid is_set() below
    threading.Thread(target=SHUTTING_DOWN.set, name="lbdn-shutdown", daemon=True).start()
    for child in active_children():
        # a deliberate stop, as billiard's own terminate_job marks it: an idle child that dies of this
        # signal is no error to log ("Process ... exited with 'signal 15 (SIGTERM)'" on every stop)
        child._controlled_termination = True
        try:
            os.kill(child.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


@worker_shutdown.connect
def _stop_reaper(**_: Any) -> None:
    if "thread" in _reaper:
        _reaper["thread"].stop()

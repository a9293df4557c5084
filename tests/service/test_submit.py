"""The one way jobs are made (core.submit, core.sweep_submit) called directly against the real
stores, without HTTP: POST /v1/jobs' path, sweeps, imports; and a sweep's evaluation jobs made by
the worker that finishes its training job and by the reaper's passes, with no read involved."""

from __future__ import annotations

import ast
import secrets
from pathlib import Path

import pytest

from core.queue import CeleryQueue
from core.reaper import PeriodicReaper
from core.states import JobKind, JobState, SweepRole
from core.store import init_db, jobs, leases, sweeps, transaction
from core.submit import JobAsk, Refused, active_jobs, record_import, submit_job
from core.sweep_submit import SweepAsk, submit_sweep
from lipcore.spec import ExperimentSpec
from tests.service.broker import waiting
from tests.service.test_limits import KWL, TOY
from tests.service.test_tasks import _write_folder
from tests.waiting import wait_until

EVALUATE = {"n_examples": 2}
ROOT = Path(__file__).resolve().parents[2]


def test_jobs_are_inserted_by_core_submit_only() -> None:
    """No other module of the service calls the store's job inserts: the rules cannot be skipped."""
    inserts = {"create_job", "create_succeeded_job"}
    callers = set()
    for package in ("api", "core", "worker"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in inserts:
                    callers.add(str(path.relative_to(ROOT)))
    assert callers == {"core/submit.py"}, callers


def _roles(sessions, sweep_id: str) -> list[str]:
    with sessions() as s:
        return [link.role for link, _ in sweeps.sweep_jobs(s, sweep_id)]


def test_every_way_in_without_http(store, tmp_path: Path, settings_for) -> None:
    settings = settings_for(tmp_path, max_active_jobs_per_tenant=4)
    tenant = f"sub-{secrets.token_hex(4)}"  # PostgreSQL's rows are shared by the session's tests
    with transaction(store) as s:
        # an import is born succeeded: never queued, so outside the active-jobs quota
        model = record_import(s, tenant=tenant, spec=ExperimentSpec.model_validate(KWL), result={"source": "t"})
        toy = record_import(s, tenant=tenant, spec=ExperimentSpec.model_validate(TOY), result={"source": "t"})
    with transaction(store) as s:
        assert jobs.get_job(s, tenant, model.id).status == JobState.succeeded
        assert [e.data for e in jobs.events_after(s, model.id, 0)] == [{"status": JobState.succeeded}]
        assert active_jobs(s, tenant) == 0
        # POST /v1/jobs' path: training (replayed by its key) and the evaluation of a model
        ask = JobAsk(spec=ExperimentSpec.model_validate(TOY), idempotency_key="k", req_hash="h")
        trained, created = submit_job(s, tenant=tenant, settings=settings, ask=ask)
        assert created and trained.kind == JobKind.train and trained.status == JobState.queued
        assert submit_job(s, tenant=tenant, settings=settings, ask=ask) == (trained, False)
        evaluation, _ = submit_job(s, tenant=tenant, settings=settings, ask=JobAsk(model=model, params=EVALUATE))
        assert (evaluation.kind, evaluation.model_id, evaluation.spec) == (JobKind.evaluate, model.id, model.spec)
        with pytest.raises(Refused, match="regression has no classes"):
            submit_job(s, tenant=tenant, settings=settings, ask=JobAsk(model=toy))
        with pytest.raises(Refused, match="resources.devices"):
            big = JobAsk(spec=ExperimentSpec.model_validate(TOY), resources={"devices": 4096})
            submit_job(s, tenant=tenant, settings=settings, ask=big)
        # a sweep: planned under every rule, its jobs made in grid order, refused whole past the quota
        sweep, made = submit_sweep(
            s,
            tenant=tenant,
            settings=settings,
            ask=SweepAsk(spec=TOY, grid={"seed": [1, 2]}),
            name="s",
            request={},
            evaluate=None,
        )
        assert [j.id for j in made] == [link.job_id for link, _ in sweeps.sweep_jobs(s, sweep.id)]
        assert active_jobs(s, tenant) == 4
        with pytest.raises(Refused, match="LBDN_MAX_ACTIVE_JOBS_PER_TENANT") as e:
            submit_sweep(
                s, tenant=tenant, settings=settings, ask=SweepAsk(spec=TOY), name="t", request={}, evaluate=None
            )
        assert e.value.status == 429


def _kwl_sweep(sessions, settings, tenant: str) -> tuple[str, str]:
    """A committed one-job sweep of a small KWL classifier on the test's image folder, with evaluations."""
    spec = {**KWL, "layer": "Plain", "dataset": "image_folder", "data_path": "colours", "train_batch_size": 8}
    spec.update(test_batch_size=8, in_channels=3, img_size=32, num_classes=2, epochs=1)
    _write_folder(settings.datasets_dir / "colours")
    with transaction(sessions) as s:
        sweep, made = submit_sweep(
            s, tenant=tenant, settings=settings, ask=SweepAsk(spec=spec), name="w", request={}, evaluate=EVALUATE
        )
        return sweep.id, made[0].id


def test_the_worker_that_finishes_training_makes_the_evaluation(tmp_path: Path, settings_for, redis_url) -> None:
    from worker.context import TaskContext
    from worker.tasks import run_train

    ctx = TaskContext(settings_for(tmp_path, lipschitz_restarts=0, broker_url=redis_url))
    init_db(ctx.engine)
    sweep_id, trained = _kwl_sweep(ctx.sessions(), ctx.settings, "local")
    assert run_train(ctx, trained) == "succeeded"
    # made by the task itself, before any reader or reaper: the evaluation is queued and sent
    assert _roles(ctx.sessions(), sweep_id) == [SweepRole.train, SweepRole.evaluate]
    with ctx.sessions()() as s:
        [evaluation] = [job for link, job in sweeps.sweep_jobs(s, sweep_id) if link.role == SweepRole.evaluate]
        assert evaluation.status == JobState.queued and evaluation.model_id == trained
    assert waiting(ctx.settings) == [(evaluation.id, JobKind.evaluate)]  # in the real broker


def test_the_reaper_advances_a_sweep_no_read_needed(store, tmp_path: Path, settings_for, redis_url) -> None:
    """A training job that succeeded while its worker could not advance the sweep (say it died just
    after): the reaper's next pass makes the evaluation, with no API running at all."""
    settings = settings_for(tmp_path, broker_url=redis_url)
    tenant = f"sub-{secrets.token_hex(4)}"
    with transaction(store) as s:
        sweep, made = submit_sweep(
            s, tenant=tenant, settings=settings, ask=SweepAsk(spec=KWL), name="r", request={}, evaluate=EVALUATE
        )
        sweep_id, trained = sweep.id, made[0].id
    with transaction(store) as s:  # what a worker does, without the sweep's advance
        leases.acquire(s, trained, "test", 60)
        leases.finish(s, trained, "test", JobState.succeeded, result={"test_acc": 10.0})
    assert _roles(store, sweep_id) == [SweepRole.train]
    queue = CeleryQueue(settings)
    reaper = PeriodicReaper(store, queue, settings)
    reaper.start()
    try:
        wait_until("the evaluation job made by the reaper", lambda: SweepRole.evaluate in _roles(store, sweep_id))
    finally:
        reaper.stop()
        reaper.join()
        queue.close()
    with store() as s:
        made_ids = {link.job_id for link, _ in sweeps.sweep_jobs(s, sweep_id) if link.role == SweepRole.evaluate}
    # in the real broker (a first pass on a Redis without the marker also re-sends every queued job)
    assert {job_id for job_id, kind in waiting(settings) if kind == JobKind.evaluate} >= made_ids


def test_a_sweeps_retry_racing_its_first_try_makes_one_sweep(own_pg_url: str, tmp_path: Path, settings_for) -> None:
    """Two requests with one Idempotency-Key at once on PostgreSQL (a client's retry while its first
    try is still in flight): the retry waits on the key's unique index until the first commits, then
    returns the first's sweep, and the jobs it had made are undone with its savepoint."""
    import threading

    from sqlalchemy import func, select, text

    from core.store import Job, Sweep, make_engine, session_factory

    engine = make_engine(own_pg_url)
    init_db(engine)
    sessions = session_factory(engine)
    ask = SweepAsk(spec=TOY, grid={"gamma": [1, 2]})
    same = dict(tenant="race", settings=settings_for(tmp_path), ask=ask, name="r", request={}, evaluate=None)
    same.update(idempotency_key="k-1", req_hash="h-1")
    first = sessions()
    sweep, made = submit_sweep(first, **same)  # not committed yet
    answered: dict[str, object] = {}

    def retry() -> None:
        try:
            with transaction(sessions) as s:
                again, remade = submit_sweep(s, **same)
                answered["retry"] = (again.id, remade)
        except Exception as e:  # the assertion below shows it
            answered["retry"] = e

    def retry_waits() -> bool:
        with engine.connect() as c:
            mine = "datname = current_database() AND wait_event_type = 'Lock'"
            return c.execute(text(f"SELECT count(*) FROM pg_stat_activity WHERE {mine}")).scalar_one() > 0

    thread = threading.Thread(target=retry)
    thread.start()
    try:
        wait_until("the retry waiting on the first try's key", retry_waits)
    finally:
        first.commit()
        first.close()
        thread.join()
    assert answered["retry"] == (sweep.id, []) and len(made) == 2
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Sweep).where(Sweep.tenant == "race")) == 1
        assert s.scalar(select(func.count()).select_from(Job).where(Job.tenant == "race")) == 2
    engine.dispose()

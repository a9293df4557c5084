"""The job store on SQLite and PostgreSQL: jobs, idempotency, events, metrics, leases, reaper, keys."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.store import jobs, keys, leases, transaction

SPEC = {"model": "Toy", "layer": "Sandwich", "epochs": 3}


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database of each test's own: these tests list every job and run the reaper over the whole
    table, so another file's jobs in the session's PostgreSQL database (the same xdist worker) would
    change their answers."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lbdn.sqlite'}"
    return str(request.getfixturevalue("own_pg_url"))


def _new(store, tenant="acme", **kw):
    with transaction(store) as s:
        job, created = jobs.create_job(s, tenant=tenant, kind="train", spec=SPEC, **kw)
    return job, created


def test_create_get_list_and_tenancy(store):
    a, created = _new(store)
    b, _ = _new(store)
    other, _ = _new(store, tenant="other")
    assert created and a.status == "queued" and a.id.startswith("job_")
    with transaction(store) as s:
        assert jobs.get_job(s, "acme", a.id).spec == SPEC
        assert jobs.get_job(s, "other", a.id) is None  # another tenant's job is not found
        page = jobs.list_jobs(s, "acme", limit=1)
        assert [j.id for j in page] == [b.id]  # newest first
        assert [j.id for j in jobs.list_jobs(s, "acme", before_pk=page[-1].pk)] == [a.id]
        assert [j.id for j in jobs.list_jobs(s, "other")] == [other.id]
        assert jobs.list_jobs(s, "acme", status="running") == []
        assert [e.data for e in jobs.events_after(s, a.id)] == [{"status": "queued"}]


def test_idempotency_key(store):
    key = f"k-{time.monotonic_ns()}"
    a, created_a = _new(store, idempotency_key=key, req_hash="h1")
    b, created_b = _new(store, idempotency_key=key, req_hash="h1")
    assert created_a and not created_b and a.id == b.id
    with pytest.raises(jobs.IdempotencyConflict):
        _new(store, idempotency_key=key, req_hash="h2")
    c, created_c = _new(store, tenant="other", idempotency_key=key, req_hash="h1")  # keys are per tenant
    assert created_c and c.id != a.id


def test_events_metrics_logs(store):
    job, _ = _new(store)
    with transaction(store) as s:
        for i in range(3):
            jobs.add_event(s, job.id, "log", {"line": f"line {i}"})
        jobs.record_metrics(s, job.id, {"epoch": 1, "train_loss": 1.0})
        jobs.record_metrics(s, job.id, {"epoch": 2, "train_loss": 0.5})
        jobs.record_metrics(s, job.id, {"epoch": 2, "train_loss": 0.4})  # a resumed attempt re-records
        jobs.record_metrics(s, job.id, {"epoch": 2, "train_loss": 0.4})  # a resume repeats its last epoch
    with transaction(store) as s:
        assert jobs.log_lines(s, job.id, offset=1) == ["line 1", "line 2"]
        assert [m["train_loss"] for m in jobs.metrics_since(s, job.id)] == [1.0, 0.4]
        assert [m["epoch"] for m in jobs.metrics_since(s, job.id, since_epoch=1)] == [2]
        seqs = [e.seq for e in jobs.events_after(s, job.id)]
        assert seqs == list(range(1, 8))
        assert [e.seq for e in jobs.events_after(s, job.id, 5)] == [6, 7]
        assert jobs.get_job(s, None, job.id).latest_metrics == {"epoch": 2, "train_loss": 0.4}


def test_lease_is_exclusive_and_reaper_requeues(store):
    job, _ = _new(store)
    with transaction(store) as s:
        assert leases.acquire(s, job.id, "w1", lease_s=60).attempt == 1
    with transaction(store) as s:
        assert leases.acquire(s, job.id, "w2", lease_s=60) is None  # a duplicate delivery leaves
        assert leases.renew(s, job.id, "w1", 60) and not leases.renew(s, job.id, "w2", 60)
        assert leases.reap(s, max_attempts=3, resend_queued_after_s=600) == []
    with transaction(store) as s:  # w1 dies: its lease runs out
        leases.renew(s, job.id, "w1", -1)
    with transaction(store) as s:
        resend = leases.reap(s, max_attempts=3, resend_queued_after_s=600)
    assert [r.job_id for r in resend] == [job.id]
    with transaction(store) as s:
        assert not leases.finish(s, job.id, "w1", "succeeded")  # the lost worker cannot finish it
        assert leases.reap(s, max_attempts=3, resend_queued_after_s=600) == []  # not re-sent twice
        again = leases.acquire(s, job.id, "w2", lease_s=60)
        assert again.attempt == 2 and again.status == "running"
    with transaction(store) as s:
        assert leases.finish(s, job.id, "w2", "succeeded", result={"ok": 1})
        assert not leases.finish(s, job.id, "w2", "succeeded")  # exactly one final result
        done = jobs.get_job(s, None, job.id)
        assert done.status == "succeeded" and done.lease_owner is None and done.finished_at


def test_reaper_fails_after_max_attempts_and_cancels_pending(store):
    a, _ = _new(store)
    b, _ = _new(store)
    with transaction(store) as s:
        leases.acquire(s, a.id, "w1", lease_s=-1)
        leases.acquire(s, b.id, "w1", lease_s=-1)
        jobs.request_cancel(s, jobs.get_job(s, None, b.id))
    with transaction(store) as s:
        assert leases.reap(s, max_attempts=1, resend_queued_after_s=600) == []
    with transaction(store) as s:
        failed, cancelled = jobs.get_job(s, None, a.id), jobs.get_job(s, None, b.id)
    assert failed.status == "failed" and "lost 1 times" in failed.error
    assert cancelled.status == "cancelled"


def test_reaper_resends_stale_queued_jobs_once(store):
    job, _ = _new(store)
    with transaction(store) as s:
        leases.mark_unsent(s, job.id)
    with transaction(store) as s:
        assert job.id in [r.job_id for r in leases.reap(s, max_attempts=3, resend_queued_after_s=600)]
    with transaction(store) as s:
        assert job.id not in [r.job_id for r in leases.reap(s, max_attempts=3, resend_queued_after_s=600)]
        # at API start-up every queued job is re-sent: the broker may have lost all of them
        assert job.id in [r.job_id for r in leases.reap(s, max_attempts=3, resend_queued_after_s=None)]


def test_cancel_queued_and_delete(store):
    job, _ = _new(store)
    with transaction(store) as s:
        assert jobs.request_cancel(s, jobs.get_job(s, "acme", job.id)).status == "cancelled"
        assert leases.acquire(s, job.id, "w1", 60) is None  # a cancelled job never starts
    with transaction(store) as s:
        jobs.delete_job(s, jobs.get_job(s, "acme", job.id))
    with transaction(store) as s:
        assert jobs.get_job(s, "acme", job.id) is None and jobs.events_after(s, job.id) == []


def test_api_keys(store):
    with transaction(store) as s:
        key, secret = keys.create_key(s, "acme", "ci")
    with transaction(store) as s:
        assert keys.tenant_for_secret(s, secret) == "acme"
        assert keys.tenant_for_secret(s, secret + "x") is None
        assert keys.any_active_key(s)
        assert keys.revoke_key(s, key.id) and not keys.revoke_key(s, key.id)
    with transaction(store) as s:
        assert keys.tenant_for_secret(s, secret) is None
        assert secret not in {k.secret_sha256 for k in keys.list_keys(s)}


def test_job_durations_are_counted_by_the_database(store):
    """The /metrics histogram of run times: cumulative counts per bound and the sum, per (kind,
    status), computed in SQL on both backends, equal to counting the jobs one by one."""
    from datetime import timedelta

    from sqlalchemy import update

    from core.store import Job, utcnow

    bounds = (10, 30, 60, float("inf"))
    runs = {"succeeded": [0.5, 9.0, 12.25, 45.0, 3600.0], "failed": [29.0], "cancelled": []}
    start = utcnow() - timedelta(days=1)
    for status, seconds in runs.items():
        for s in seconds:
            job_id = _new(store)[0].id
            with transaction(store) as t:
                ended = {"status": status, "started_at": start, "finished_at": start + timedelta(seconds=s)}
                t.execute(update(Job).where(Job.id == job_id).values(**ended))
    _new(store)  # queued: never started, not counted
    with store() as s:
        got = {(kind, status): rest for kind, status, *rest in jobs.duration_histogram(s, bounds)}
    assert set(got) == {("train", "succeeded"), ("train", "failed")}
    for status in ("succeeded", "failed"):
        within, total = got[("train", status)]
        assert within == [sum(x <= b for x in runs[status]) for b in bounds] and within[-1] == len(runs[status])
        assert total == pytest.approx(sum(runs[status]), abs=1e-3)

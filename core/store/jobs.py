"""Repository functions of jobs, their events, metrics and logs. Each takes an open Session.

Every read that a tenant can trigger is filtered by tenant, so another tenant's job is simply not
found (the API answers 404, never 403).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.labels import NONE, Labels
from core.states import FINISHED, EventKind, JobKind, JobState
from core.store.engine import rows_changed
from core.store.tables import Job, JobEvent, JobMetric, Sweep, utcnow


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


def new_job_id() -> str:
    return f"job_{secrets.token_hex(10)}"


def request_hash(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def create_job(
    s: Session,
    *,
    tenant: str,
    kind: JobKind,
    spec: dict[str, Any],
    params: dict[str, Any] | None = None,
    model_id: str | None = None,
    idempotency_key: str | None = None,
    req_hash: str | None = None,
    resources: dict[str, Any] | None = None,
    labels: Labels = NONE,
) -> tuple[Job, bool]:
    """Insert a queued job; with an idempotency key an earlier identical request's job is returned.

    Returns (job, created). Raises IdempotencyConflict when the key came with another body.
    """
    if idempotency_key is not None:
        earlier = _by_idempotency_key(s, tenant, idempotency_key)
        if earlier is not None:
            return replay(earlier, req_hash), False
    job = Job(
        id=new_job_id(),
        tenant=tenant,
        kind=kind,
        status=JobState.queued,
        spec=spec,
        params=params,
        model_id=model_id,
        idempotency_key=idempotency_key,
        request_hash=req_hash,
        resources=resources,
        **labels.columns(),
        enqueued_at=utcnow(),  # the caller sends the message next; mark_unsent if that fails
    )
    try:
        with s.begin_nested():  # a concurrent retry with the same key may win the insert
            s.add(job)
            s.flush()
    except IntegrityError:
        earlier = _by_idempotency_key(s, tenant, idempotency_key) if idempotency_key else None
        if earlier is None:
            raise
        return replay(earlier, req_hash), False
    add_event(s, job.id, EventKind.state, {"status": JobState.queued})
    return job, True


def create_succeeded_job(
    s: Session, *, tenant: str, kind: JobKind, spec: dict[str, Any], result: dict[str, Any], labels: Labels = NONE
) -> Job:
    """Insert a job that is born succeeded (an import: there is nothing to run, so it is never
    queued, leased or sent); not committed."""
    now = utcnow()
    ended = {"status": JobState.succeeded, "result": result, "started_at": now, "finished_at": now}
    job = Job(id=new_job_id(), tenant=tenant, kind=kind, spec=spec, **ended, **labels.columns())
    s.add(job)
    s.flush()
    add_event(s, job.id, EventKind.state, {"status": JobState.succeeded})
    return job


def _by_idempotency_key(s: Session, tenant: str, key: str) -> Job | None:
    return s.scalar(select(Job).where(Job.tenant == tenant, Job.idempotency_key == key))


R = TypeVar("R", Job, Sweep)


def replay(row: R, req_hash: str | None) -> R:
    """The job or sweep an earlier request made with this Idempotency-Key, when this request's
    body is the same; IdempotencyConflict when it is not."""
    if row.request_hash != req_hash:
        raise IdempotencyConflict("this Idempotency-Key was already used with a different request body; use a new key")
    return row


def get_job(s: Session, tenant: str | None, job_id: str) -> Job | None:
    """The job `job_id` of `tenant` (any tenant when None: worker side only)."""
    q = select(Job).where(Job.id == job_id)
    if tenant is not None:
        q = q.where(Job.tenant == tenant)
    return s.scalar(q)


def list_jobs(
    s: Session,
    tenant: str,
    *,
    status: JobState | None = None,
    kind: JobKind | None = None,
    limit: int = 50,
    before_pk: int | None = None,
) -> list[Job]:
    """Newest first; `before_pk` is the cursor (the pk of the last job of the previous page)."""
    q = select(Job).where(Job.tenant == tenant)
    if status:
        q = q.where(Job.status == status)
    if kind:
        q = q.where(Job.kind == kind)
    if before_pk is not None:
        q = q.where(Job.pk < before_pk)
    return list(s.scalars(q.order_by(Job.pk.desc()).limit(limit)))


def set_labels(s: Session, job: Job, changes: dict[str, Any]) -> Job:
    """Set some of a job's labels (`changes`: name, tags, note as core.labels checked them; None
    clears one); not committed. No event: labels change nothing a stream follows."""
    for field, value in changes.items():
        setattr(job, field, value or None)
    job.updated_at = utcnow()
    return job


def add_event(s: Session, job_id: str, kind: EventKind, data: dict[str, Any]) -> int:
    """Append an event; its number comes from an atomic increment of the job's event_seq."""
    seq = s.execute(
        update(Job).where(Job.id == job_id).values(event_seq=Job.event_seq + 1).returning(Job.event_seq)
    ).scalar_one()
    s.add(JobEvent(job_id=job_id, seq=seq, kind=kind, data=data))
    return seq


def events_after(
    s: Session,
    job_id: str,
    after_seq: int = 0,
    *,
    kinds: tuple[EventKind, ...] | None = None,
    limit: int = 500,
) -> list[JobEvent]:
    q = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
    if kinds:
        q = q.where(JobEvent.kind.in_(kinds))
    return list(s.scalars(q.order_by(JobEvent.seq).limit(limit)))


def log_lines(s: Session, job_id: str, offset: int = 0, limit: int = 1000) -> list[str]:
    """Log lines `offset`, `offset+1`, ... (0-based line numbers) of a job."""
    q = (
        select(JobEvent.data)
        .where(JobEvent.job_id == job_id, JobEvent.kind == EventKind.log)
        .order_by(JobEvent.seq)
        .offset(offset)
        .limit(limit)
    )
    return [d.get("line", "") for d in s.scalars(q)]


def record_metrics(s: Session, job_id: str, row: dict[str, Any]) -> None:
    """Store one epoch's metrics (replacing a row of the same epoch from an interrupted attempt).

    A resumed run reports its checkpoint's last epoch again (it may have died before reporting it):
    a row already stored as it is changes nothing and adds no event."""
    epoch = int(row["epoch"])
    stored = s.get(JobMetric, (job_id, epoch))
    if stored is None:
        s.add(JobMetric(job_id=job_id, epoch=epoch, data=row))
    elif stored.data == json.loads(json.dumps(row)):
        return
    else:
        stored.data = row
    s.execute(update(Job).where(Job.id == job_id).values(latest_metrics=row, updated_at=utcnow()))
    add_event(s, job_id, EventKind.metrics, row)


def metrics_since(s: Session, job_id: str, since_epoch: int = 0) -> list[dict[str, Any]]:
    q = (
        select(JobMetric.data)
        .where(JobMetric.job_id == job_id, JobMetric.epoch > since_epoch)
        .order_by(JobMetric.epoch)
    )
    return list(s.scalars(q))


def request_cancel(s: Session, job: Job) -> Job:
    """Cancel a queued job at once; flag a running one (its worker stops at the next step, and it
    ends `cancelled` even when it finishes first: leases.finish). Each step is a conditional UPDATE,
    so a worker taking or finishing the job meanwhile is seen (the refreshed job tells which)."""
    now = utcnow()
    if rows_changed(
        s,
        update(Job)
        .where(Job.id == job.id, Job.status == JobState.queued)
        .values(status=JobState.cancelled, finished_at=now, updated_at=now, cancel_requested=True),
    ):
        add_event(s, job.id, EventKind.state, {"status": JobState.cancelled})
    elif rows_changed(
        s,
        update(Job)
        .where(Job.id == job.id, Job.status == JobState.running, Job.cancel_requested.is_(False))
        .values(cancel_requested=True, updated_at=now),
    ):
        add_event(s, job.id, EventKind.state, {"status": JobState.running, "cancel_requested": True})
    s.refresh(job)
    return job


def cancel_requested(s: Session, job_id: str) -> bool:
    return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def delete_job(s: Session, job: Job) -> None:
    """Remove a finished job's rows (its artifact folder is the caller's)."""
    if job.status not in FINISHED:
        raise ValueError(f"job {job.id} is {job.status}; cancel it first")
    s.execute(delete(JobEvent).where(JobEvent.job_id == job.id))
    s.execute(delete(JobMetric).where(JobMetric.job_id == job.id))
    s.execute(delete(Job).where(Job.id == job.id))


def duration_histogram(s: Session, bounds: Sequence[float]) -> list[tuple[JobKind, JobState, list[int], float]]:
    """(kind, status, cumulative counts per bound, seconds in all) of finished jobs that started,
    over all tenants, for the Prometheus histogram of run times (first start to end); an infinite
    bound counts every job of its group.

    Counted by the database in one grouped scan: the scrape reads one row per (kind, status), not
    one per finished job (100,000 rows per scrape, per API replica, at issue 19's scale)."""
    if s.get_bind().dialect.name == "postgresql":
        seconds: Any = func.extract("epoch", Job.finished_at - Job.started_at)
    else:  # SQLite keeps datetimes as text: julianday() reads them (days as a double; ~10 us here)
        seconds = (func.julianday(Job.finished_at) - func.julianday(Job.started_at)) * 86400.0
    finite = [b for b in bounds if b != float("inf")]
    q = (
        select(
            Job.kind,
            Job.status,
            func.count(),
            func.coalesce(func.sum(seconds), 0.0),
            *(func.sum(case((seconds <= b, 1), else_=0)) for b in finite),
        )
        .where(Job.status.in_(FINISHED), Job.started_at.is_not(None), Job.finished_at.is_not(None))
        .group_by(Job.kind, Job.status)
    )
    out = []
    for kind, status, n, total, *within in s.execute(q):
        out.append((kind, status, [int(c) for c in within] + [int(n)] * (len(bounds) - len(finite)), float(total)))
    return out


def count_by_state(s: Session) -> list[tuple[JobKind, JobState, int]]:
    """(kind, status, count) over all tenants, for the Prometheus gauge."""
    q = select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)
    return [(k, st, int(n)) for k, st, n in s.execute(q)]

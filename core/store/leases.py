"""Which worker runs a job: leases taken and renewed by conditional UPDATEs, and the reaper.

A worker owns a job while `lease_owner` is its id and `lease_expires_at` lies ahead; every change a
worker makes to a running job is conditional on still owning it. A duplicate broker delivery finds a
live lease (or a finished job) and leaves. A job whose lease ran out (its worker died) is put back
in the queue by the reaper, at most `max_attempts` starts in all, and resumes from its checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, case, cast, func, insert, literal, or_, select, update
from sqlalchemy.orm import Session

from core.states import EventKind, JobKind, JobState
from core.store.engine import rows_changed
from core.store.jobs import add_event
from core.store.tables import Job, JobEvent, utcnow


def acquire(s: Session, job_id: str, owner: str, lease_s: float, **placement: str) -> Job | None:
    """Take the job for `owner` if it is queued, or running under an expired lease; else None.
    `placement`: where it runs now (device, host, worker columns), recorded with the lease."""
    now = utcnow()
    taken = rows_changed(
        s,
        update(Job)
        .where(
            Job.id == job_id,
            or_(
                Job.status == JobState.queued,
                and_(Job.status == JobState.running, or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)),
            ),
        )
        .values(
            status=JobState.running,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_s),
            attempt=Job.attempt + 1,
            started_at=func.coalesce(Job.started_at, now),
            updated_at=now,
            **placement,
        ),
    )
    if not taken:
        return None
    job = s.scalar(select(Job).where(Job.id == job_id).execution_options(populate_existing=True))
    assert job is not None  # taken just now in this transaction
    data = {"status": JobState.running, "attempt": job.attempt, "worker": owner}
    add_event(
        s,
        job_id,
        EventKind.state,
        {**data, **{("worker_name" if k == "worker" else k): v for k, v in placement.items()}},
    )
    return job


def renew(s: Session, job_id: str, owner: str, lease_s: float) -> bool:
    """Extend the lease; False when `owner` no longer holds it (then it must stop at once)."""
    now = utcnow()
    return bool(
        rows_changed(
            s,
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.status == JobState.running)
            .values(lease_expires_at=now + timedelta(seconds=lease_s)),
        )
    )


def update_owned(s: Session, job_id: str, owner: str, **values: Any) -> bool:
    """Change columns of a running job that `owner` still holds."""
    return bool(
        rows_changed(
            s,
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.status == JobState.running)
            .values(updated_at=utcnow(), **values),
        )
    )


def finish(s: Session, job_id: str, owner: str, status: JobState, **values: Any) -> bool:
    """End a job that `owner` holds: succeeded, failed or cancelled. False if the lease was lost.

    A job whose cancel was accepted (cancel_requested) never ends `succeeded`: when it finished its
    last step before seeing the flag, it ends `cancelled` (result and artifacts kept), so an accepted
    cancel has one outcome (README "Jobs: cancel and delete")."""
    now = utcnow()
    owned = (Job.id == job_id, Job.lease_owner == owner, Job.status == JobState.running)
    ended = dict(finished_at=now, updated_at=now, lease_owner=None, lease_expires_at=None, **values)
    if status == JobState.succeeded:  # two conditional UPDATEs: a cancel flagged in between is seen
        done = rows_changed(
            s, update(Job).where(*owned, Job.cancel_requested.is_(False)).values(status=status, **ended)
        )
        if not done and rows_changed(s, update(Job).where(*owned).values(status=JobState.cancelled, **ended)):
            add_event(s, job_id, EventKind.state, {"status": JobState.cancelled, "after_last_step": True})
            return True
    else:
        done = rows_changed(s, update(Job).where(*owned).values(status=status, **ended))
    if done:
        data: dict[str, Any] = {"status": status}
        if values.get("error"):
            data["error"] = values["error"]
        add_event(s, job_id, EventKind.state, data)
    return bool(done)


def release(s: Session, job_id: str, owner: str) -> bool:
    """Give a running job that `owner` holds back to the queue: its worker is shutting down and has
    checkpointed it. The start does not count against max_attempts (nothing was lost), and
    enqueued_at is cleared so the next reaper pass (or the API's start) sends it again."""
    now = utcnow()
    done = rows_changed(
        s,
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.status == JobState.running)
        .values(
            status=JobState.queued,
            lease_owner=None,
            lease_expires_at=None,
            enqueued_at=None,
            attempt=Job.attempt - 1,
            updated_at=now,
        ),
    )
    if done:
        add_event(s, job_id, EventKind.state, {"status": JobState.queued, "interrupted": "worker shutdown"})
    return bool(done)


def fail_unleased(s: Session, job_id: str, error: str) -> bool:
    """Fail a queued job that cannot run at all (e.g. its spec no longer loads)."""
    now = utcnow()
    done = rows_changed(
        s,
        update(Job)
        .where(Job.id == job_id, Job.status == JobState.queued)
        .values(status=JobState.failed, error=error, finished_at=now, updated_at=now),
    )
    if done:
        add_event(s, job_id, EventKind.state, {"status": JobState.failed, "error": error})
    return bool(done)


@dataclass(frozen=True)
class Resend:
    job_id: str
    kind: JobKind


def reap(s: Session, *, max_attempts: int, resend_queued_after_s: float | None) -> list[Resend]:
    """Recover lost work; returns the jobs whose message must be sent (again).

    - running jobs with an expired lease: cancelled if a cancel was pending, failed after
      `max_attempts` starts, else queued again (they resume from their checkpoint);
    - queued jobs never sent (enqueued_at NULL) or sent longer than `resend_queued_after_s` ago
      (None: every queued job, as at API start-up after a broker restart).
    Each change is a conditional UPDATE, so two reapers never both re-send one job.
    """
    now = utcnow()
    return _requeue_expired(s, now, max_attempts) + _resend_stale(s, now, resend_queued_after_s)


def _requeue_expired(s: Session, now: datetime, max_attempts: int) -> list[Resend]:
    """One UPDATE for every expired lease (a row per job cost 3 round trips: a pass over 1,000
    lost jobs took 9 s, README "At scale"). It re-checks each row as it changes it, so a lease
    renewed meanwhile, or a job another reaper took first, is left alone; then one INSERT of the
    jobs' state events, numbered by the same UPDATE's event_seq increment."""
    cancelling = Job.cancel_requested.is_(True)
    worn_out = and_(Job.cancel_requested.is_(False), Job.attempt >= max_attempts)
    new_status = case(
        (cancelling, JobState.cancelled.value), (worn_out, JobState.failed.value), else_=JobState.queued.value
    )
    lost = f" times (max_attempts={max_attempts})"
    error = literal("the worker running this job was lost ") + cast(Job.attempt, String) + literal(lost)
    rows = s.execute(
        update(Job)
        .where(Job.status == JobState.running, Job.lease_expires_at < now)
        .values(
            status=new_status,
            lease_owner=None,
            lease_expires_at=None,
            updated_at=now,
            enqueued_at=case((or_(cancelling, worn_out), Job.enqueued_at), else_=now),
            finished_at=case((or_(cancelling, worn_out), now), else_=Job.finished_at),
            error=case((worn_out, error), else_=Job.error),
            event_seq=Job.event_seq + 1,
        )
        .returning(Job.id, Job.kind, Job.status, Job.error, Job.event_seq)
        .execution_options(synchronize_session=False)
    ).all()
    events, resend = [], []
    for job_id, kind, status, err, seq in rows:
        data: dict[str, Any] = {"status": status}
        if status == JobState.failed:
            data["error"] = err
        elif status == JobState.queued:
            data["requeued"] = True
            resend.append(Resend(job_id, kind))
        events.append({"job_id": job_id, "seq": seq, "kind": EventKind.state, "data": data, "created_at": now})
    if events:
        s.execute(insert(JobEvent), events)
    return resend


def _resend_stale(s: Session, now: datetime, after_s: float | None) -> list[Resend]:
    """One UPDATE of every queued job not sent since the cutoff. Rows another reaper is marking at
    the same moment are locked by it and skipped (FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite
    runs one writer at a time), so two concurrent passes never both re-send a job."""
    cutoff = now if after_s is None else now - timedelta(seconds=after_s)
    stale = or_(Job.enqueued_at.is_(None), Job.enqueued_at <= cutoff)
    mine = select(Job.pk).where(Job.status == JobState.queued, stale).with_for_update(skip_locked=True)
    rows = s.execute(
        update(Job)
        .where(Job.pk.in_(mine.scalar_subquery()), Job.status == JobState.queued, stale)
        .values(enqueued_at=now)
        .returning(Job.id, Job.kind)
        .execution_options(synchronize_session=False)
    ).all()
    return [Resend(job_id, kind) for job_id, kind in rows]


def mark_unsent(s: Session, job_id: str) -> None:
    """The broker refused the message: let the next reaper pass send it."""
    s.execute(update(Job).where(Job.id == job_id, Job.status == JobState.queued).values(enqueued_at=None))

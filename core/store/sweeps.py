"""Repository functions of sweeps (groups of jobs from one grid or paper preset). Each takes a Session.

A sweep's evaluation jobs are created by `pending_evaluations` + `add_evaluation` once its training
jobs have succeeded: by the worker that finished one and by the reaper's passes
(core.sweep_submit.advance_sweeps), never by a read.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.states import JobKind, JobState, SweepRole
from core.store import jobs
from core.store.tables import Job, Sweep, SweepJob


def new_sweep_id() -> str:
    return f"swp_{secrets.token_hex(10)}"


def create_sweep(
    s: Session,
    *,
    tenant: str,
    name: str,
    preset: str | None,
    request: dict[str, Any],
    evaluate: dict[str, Any] | None,
    specs: list[tuple[dict[str, Any], dict[str, Any]]],
) -> tuple[Sweep, list[Job]]:
    """Insert a sweep and one queued training job per (resolved spec, grid point); not committed."""
    sweep = Sweep(id=new_sweep_id(), tenant=tenant, name=name, preset=preset, request=request, evaluate=evaluate)
    s.add(sweep)
    s.flush()
    made = []
    for i, (spec, point) in enumerate(specs):
        job, _ = jobs.create_job(s, tenant=tenant, kind=JobKind.train, spec=spec)
        s.add(SweepJob(sweep_id=sweep.id, job_id=job.id, role=SweepRole.train, position=i, point=point))
        made.append(job)
    s.flush()
    return sweep, made


def get_sweep(s: Session, tenant: str, sweep_id: str) -> Sweep | None:
    return s.scalar(select(Sweep).where(Sweep.id == sweep_id, Sweep.tenant == tenant))


def list_sweeps(
    s: Session, tenant: str, *, preset: str | None = None, limit: int = 50, before_pk: int | None = None
) -> list[Sweep]:
    """Newest first; `before_pk` is the cursor (pk of the last sweep of the previous page)."""
    q = select(Sweep).where(Sweep.tenant == tenant)
    if preset:
        q = q.where(Sweep.preset == preset)
    if before_pk is not None:
        q = q.where(Sweep.pk < before_pk)
    return list(s.scalars(q.order_by(Sweep.pk.desc()).limit(limit)))


def sweep_jobs(s: Session, sweep_id: str) -> list[tuple[SweepJob, Job | None]]:
    """The sweep's links in grid order (training job before its evaluation), with the job rows
    (None for a job the user deleted)."""
    q = (
        select(SweepJob, Job)
        .outerjoin(Job, Job.id == SweepJob.job_id)
        .where(SweepJob.sweep_id == sweep_id)
        .order_by(SweepJob.position, SweepJob.role.desc())
    )
    return [(link, job) for link, job in s.execute(q).all()]


def pending_evaluations(s: Session, sweep: Sweep) -> list[tuple[SweepJob, Job]]:
    """Succeeded training jobs of the sweep that have no evaluation job yet (none for Toy models,
    which have no classes to attack, or when the sweep evaluates nothing)."""
    if sweep.evaluate is None:
        return []
    # torch-free: a model's task is on its card
    from lipcore.catalog import get_card

    rows = sweep_jobs(s, sweep.id)
    evaluated = {link.train_job_id for link, _ in rows if link.role == SweepRole.evaluate}
    return [
        (link, job)
        for link, job in rows
        if link.role == SweepRole.train
        and job is not None
        and job.status == JobState.succeeded
        and job.id not in evaluated
        and get_card(str(job.spec.get("model"))).task == "classifier"
    ]


def add_evaluation(s: Session, sweep: Sweep, link: SweepJob, trained: Job) -> Job | None:
    """Create the evaluation job of one trained model; None if a concurrent reader already did.

    The job's idempotency key is derived from the trained job, so two API processes advancing the
    same sweep at once make one job between them.
    """
    try:
        job, created = jobs.create_job(
            s,
            tenant=sweep.tenant,
            kind=JobKind.evaluate,
            spec=trained.spec,
            params=sweep.evaluate,
            model_id=trained.id,
            # core.submit.INTERNAL_KEY_PREFIX: tenants' keys cannot start so (refused with a 422)
            idempotency_key=f"sweep-eval:{sweep.id}:{trained.id}",
            req_hash=f"sweep-eval:{trained.id}",
        )
    except jobs.IdempotencyConflict:  # a tenant's job took the key before the namespace was reserved
        return None
    if not created:
        return None
    try:
        with s.begin_nested():
            s.add(
                SweepJob(
                    sweep_id=sweep.id,
                    job_id=job.id,
                    role=SweepRole.evaluate,
                    position=link.position,
                    point=link.point,
                    train_job_id=trained.id,
                )
            )
    except IntegrityError:
        return None
    return job

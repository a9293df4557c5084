"""Repository functions of sweeps (groups of jobs from one grid or paper preset). Each takes a Session.

Jobs are made by the submission path (core.submit); these functions only record which jobs belong
to a sweep. A sweep's evaluation jobs are made once its training jobs have succeeded
(`pending_evaluations`, then `link_evaluation`): by the worker that finished one and by the
reaper's passes (core.sweep_submit.advance_sweeps), never by a read.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.states import JobState, SweepRole
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
    trained: list[tuple[Job, dict[str, Any]]],
    idempotency_key: str | None = None,
    req_hash: str | None = None,
) -> Sweep:
    """Insert a sweep holding its training jobs (job, grid point), in grid order; not committed.
    A key the tenant already gave a sweep raises IntegrityError at the flush (a concurrent retry)."""
    sweep = Sweep(
        id=new_sweep_id(),
        tenant=tenant,
        name=name,
        preset=preset,
        request=request,
        evaluate=evaluate,
        idempotency_key=idempotency_key,
        request_hash=req_hash,
    )
    s.add(sweep)
    s.flush()
    for i, (job, point) in enumerate(trained):
        s.add(SweepJob(sweep_id=sweep.id, job_id=job.id, role=SweepRole.train, position=i, point=point))
    s.flush()
    return sweep


def by_idempotency_key(s: Session, tenant: str, key: str) -> Sweep | None:
    return s.scalar(select(Sweep).where(Sweep.tenant == tenant, Sweep.idempotency_key == key))


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


def evaluation_key(sweep: Sweep, trained: Job) -> str:
    """The idempotency key of a trained job's evaluation: derived from both, so two processes
    advancing the same sweep at once make one job between them (core.submit.INTERNAL_KEY_PREFIX:
    tenants' keys cannot start so)."""
    return f"sweep-eval:{sweep.id}:{trained.id}"


def link_evaluation(s: Session, sweep: Sweep, link: SweepJob, job: Job) -> bool:
    """Record `job` as the evaluation of the training job of `link`; False if a concurrent pass
    already recorded one."""
    try:
        with s.begin_nested():
            s.add(
                SweepJob(
                    sweep_id=sweep.id,
                    job_id=job.id,
                    role=SweepRole.evaluate,
                    position=link.position,
                    point=link.point,
                    train_job_id=link.job_id,
                )
            )
    except IntegrityError:
        return False
    return True


def sweeps_of(s: Session, job_ids: list[str]) -> dict[str, str]:
    """{job id: its sweep's id} for those of `job_ids` that belong to a sweep (one query)."""
    if not job_ids:
        return {}
    q = select(SweepJob.job_id, SweepJob.sweep_id).where(SweepJob.job_id.in_(job_ids))
    return {job_id: sweep_id for job_id, sweep_id in s.execute(q)}

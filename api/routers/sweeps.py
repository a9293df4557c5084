"""/v1/sweeps: a grid of training jobs (a base spec with a grid, or a paper preset) as one object.

A sweep passes the submission rules whole (core.sweep_submit.submit_sweep) before any job is made.
Reads never create jobs: a sweep's evaluation jobs are made by the worker that finishes a training
job, and by the reaper's passes (core.sweep_submit.advance_sweeps).
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response

from api.deps import CurrentTenant, SessionDep, require_json
from api.problems import problem_responses
from api.schemas import (
    AttackParams,
    ProgressOut,
    SweepJobOut,
    SweepOut,
    SweepPage,
    SweepRequest,
)
from api.services import Services
from core.states import FINISHED, JobKind, JobState, SweepRole
from core.store import Sweep, jobs, sweeps
from core.sweep_submit import SweepAsk, submit_sweep
from lipcore.catalog.presets import PRESETS

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"])


def _evaluate(body: SweepRequest) -> dict[str, Any] | None:
    """The attack settings of the sweep's evaluation jobs; None for none (an unknown preset is
    refused by the submission rules)."""
    if isinstance(body.evaluate, AttackParams):
        return body.evaluate.model_dump()
    preset = PRESETS.get(body.preset) if body.preset is not None else None
    wanted = body.evaluate if body.evaluate is not None else (preset is not None and preset.evaluate)
    return AttackParams().model_dump() if wanted else None


@router.post(
    "",
    status_code=201,
    response_model=SweepOut,
    dependencies=[Depends(require_json)],
    responses=problem_responses(415, 422, 429),
    summary="Start a sweep: one training job per grid point (and evaluations as they finish)",
)
def create_sweep(
    body: SweepRequest,
    response: Response,
    session: SessionDep,
    tenant: CurrentTenant,
    services: Services,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=200,
            description="a retry with the same key and body returns the sweep made the first time",
        ),
    ] = None,
) -> SweepOut:
    request = body.model_dump(mode="json", exclude_none=True)  # stored as asked, and what a retry must repeat
    ask = SweepAsk(
        preset=body.preset,
        spec=body.spec,
        grid=body.grid,
        epochs=body.epochs,
        seeds=body.seeds,
        overrides=body.overrides,
        only=body.only,
    )
    sweep, made = submit_sweep(
        session,
        tenant=tenant,
        settings=services.settings,
        ask=ask,
        name=body.name or body.preset or "sweep",
        request=request,
        evaluate=_evaluate(body),
        tags=body.tags,
        idempotency_key=idempotency_key,
        req_hash=jobs.request_hash(request),
    )
    session.commit()
    if made:
        services.send([(job.id, JobKind.train) for job in made])
    else:  # a replay: the sweep made the first time, its jobs as they are now
        response.headers["Idempotent-Replayed"] = "true"
    return _sweep_out(session, sweep, with_jobs=True)


@router.get("", response_model=SweepPage, summary="Your sweeps, newest first (without their jobs)")
def list_sweeps(
    session: SessionDep,
    tenant: CurrentTenant,
    preset: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
) -> SweepPage:
    rows = sweeps.list_sweeps(session, tenant, preset=preset, limit=limit, before_pk=int(cursor) if cursor else None)
    return SweepPage(
        items=[_sweep_out(session, sw, with_jobs=False) for sw in rows],
        next_cursor=str(rows[-1].pk) if len(rows) == limit else None,
    )


def _tenant_sweep(sweep_id: str, session: SessionDep, tenant: CurrentTenant) -> Sweep:
    sweep = sweeps.get_sweep(session, tenant, sweep_id)
    if sweep is None:
        raise HTTPException(404, f"no sweep {sweep_id!r}")
    return sweep


TenantSweep = Annotated[Sweep, Depends(_tenant_sweep)]


@router.get("/{sweep_id}", response_model=SweepOut, summary="A sweep's jobs, their states and results")
def get_sweep(
    sweep: TenantSweep,
    session: SessionDep,
    history: Annotated[bool, Query(description="include each training job's per-epoch metrics")] = False,
) -> SweepOut:
    return _sweep_out(session, sweep, with_jobs=True, history=history)


@router.post("/{sweep_id}/cancel", response_model=SweepOut, summary="Cancel every unfinished job of a sweep")
def cancel_sweep(sweep: TenantSweep, session: SessionDep) -> SweepOut:
    for _, job in sweeps.sweep_jobs(session, sweep.id):
        if job is not None and job.status not in FINISHED:
            jobs.request_cancel(session, job)
    # no evaluation jobs follow a cancelled sweep
    sweep.evaluate = None
    session.commit()
    return _sweep_out(session, sweep, with_jobs=True)


def _status(counts: Counter[str], pending: bool) -> JobState:
    """A sweep's state: running while any of its jobs may still run, then its worst final state."""
    if pending or counts[JobState.queued] or counts[JobState.running]:
        return JobState.running
    if counts[JobState.failed]:
        return JobState.failed
    if counts[JobState.cancelled]:
        return JobState.cancelled
    return JobState.succeeded


def _sweep_out(session: Any, sweep: Sweep, *, with_jobs: bool, history: bool = False) -> SweepOut:
    rows = sweeps.sweep_jobs(session, sweep.id)
    counts = Counter(job.status if job else "deleted" for _, job in rows)
    pending = bool(sweeps.pending_evaluations(session, sweep))
    items = None
    if with_jobs:
        items = [
            SweepJobOut(
                job_id=link.job_id,
                role=link.role,
                point=link.point,
                train_job_id=link.train_job_id,
                status=job.status if job else "deleted",
                spec=job.spec if job and link.role == SweepRole.train else None,
                progress=ProgressOut(**job.progress) if job and job.progress else None,
                result=job.result if job else None,
                error=job.error if job else None,
                history=jobs.metrics_since(session, job.id)
                if history and job and link.role == SweepRole.train
                else None,
            )
            for link, job in rows
        ]
    return SweepOut(
        id=sweep.id,
        name=sweep.name,
        preset=sweep.preset,
        created_at=sweep.created_at,
        request=sweep.request,
        evaluate=sweep.evaluate,
        status=_status(counts, pending),
        counts=dict(counts),
        jobs=items,
    )

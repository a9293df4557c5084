"""/v1/sweeps: a grid of training jobs (a base spec with a grid, or a paper preset) as one object.

Reading a sweep also advances it: a succeeded training job whose sweep evaluates gets its
evaluation job then (so the worker needs no knowledge of sweeps, and a sweep nobody reads costs
nothing more).
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import ValidationError

from api.deps import CurrentTenant, SessionDep, SettingsDep
from api.problems import problem_responses, validation_detail
from api.routers.jobs import _resolve_image_folder, require_json, send
from api.schemas import (
    AttackParams,
    ProgressOut,
    SweepJobOut,
    SweepOut,
    SweepPage,
    SweepRequest,
)
from core.states import FINISHED, JobKind, JobState, SweepRole
from core.store import Sweep, jobs, sweeps, transaction
from lipcore.paper import PRESETS, dedupe, expand
from lipcore.spec import ExperimentSpec

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"])
MAX_JOBS = 500  # per sweep: a typo in a grid should not queue a month of GPU time


def _specs(body: SweepRequest) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    made = _grid_specs(body)
    if body.overrides:
        made = [({**spec, **body.overrides}, point) for spec, point in made]
    return made


def _grid_specs(body: SweepRequest) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    if body.preset is not None:
        preset = PRESETS.get(body.preset)
        if preset is None:
            raise HTTPException(422, f"preset: no preset {body.preset!r}; expected one of {sorted(PRESETS)}")
        return preset.specs(body.epochs, body.seeds)
    base = dict(body.spec or {})
    grid = dict(body.grid)
    if body.epochs is not None:
        base["epochs"] = body.epochs
    if body.seeds is not None:
        base.pop("seed", None)
        grid["seed"] = body.seeds
    try:
        return dedupe(expand(base, grid))
    except ValueError as e:
        raise HTTPException(422, str(e)) from None


def _matches(spec: dict[str, Any], only: dict[str, list[Any]]) -> bool:
    """True when every field named in `only` has one of its values (numbers compared as numbers,
    "none" matching an unset field such as a Plain network's gamma)."""
    for key, values in only.items():
        if key not in spec:
            raise HTTPException(422, f"only.{key}: not a spec field")
        have = spec[key]
        if not any(
            have == v
            or (isinstance(have, (int, float)) and _number(v) == have)
            or (have is None and str(v).lower() in ("none", "null"))
            for v in values
        ):
            return False
    return True


def _number(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _evaluate(body: SweepRequest) -> dict[str, Any] | None:
    if isinstance(body.evaluate, AttackParams):
        return body.evaluate.model_dump()
    wanted = body.evaluate if body.evaluate is not None else (body.preset is not None and PRESETS[body.preset].evaluate)
    return AttackParams().model_dump() if wanted else None


@router.post(
    "",
    status_code=201,
    response_model=SweepOut,
    dependencies=[Depends(require_json)],
    responses=problem_responses(415, 422),
    summary="Start a sweep: one training job per grid point (and evaluations as they finish)",
)
def create_sweep(
    body: SweepRequest, request: Request, session: SessionDep, tenant: CurrentTenant, settings: SettingsDep
) -> SweepOut:
    raw = _specs(body)
    if len(raw) > MAX_JOBS:
        raise HTTPException(422, f"grid: {len(raw)} jobs; a sweep holds at most {MAX_JOBS}")
    resolved = []
    for fields, point in raw:
        try:
            spec = ExperimentSpec.model_validate(fields)
        except ValidationError as e:
            where = ", ".join(f"{k}={v}" for k, v in point.items()) or "the base spec"
            msg = validation_detail(e.errors()).removeprefix("body: ")
            raise HTTPException(422, f"spec at {where}: {msg}") from None
        done = _resolve_image_folder(spec, settings).model_dump(mode="json")
        # the point as resolved (a Plain network has no gamma), so equal specs collapse to one job
        resolved.append((done, {k: done.get(k, v) for k, v in point.items()}))
    resolved = dedupe(resolved)
    if body.only:
        resolved = [(spec, point) for spec, point in resolved if _matches(spec, body.only)]
        if not resolved:
            raise HTTPException(422, f"only: no job of the sweep matches {body.only}")
    evaluate = _evaluate(body)
    sweep, made = sweeps.create_sweep(
        session,
        tenant=tenant,
        name=body.name or body.preset or "sweep",
        preset=body.preset,
        request=body.model_dump(mode="json", exclude_none=True),
        evaluate=evaluate,
        specs=resolved,
    )
    session.commit()
    for job in made:
        request.app.state.metrics.jobs_submitted.labels(JobKind.train).inc()
        send(request, job.id, JobKind.train)
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
    request: Request,
    history: Annotated[bool, Query(description="include each training job's per-epoch metrics")] = False,
) -> SweepOut:
    _advance(request, sweep)
    session.expire_all()
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


def _advance(request: Request, sweep: Sweep) -> None:
    """Submit the evaluation jobs of newly succeeded training jobs (in their own transaction)."""
    made = []
    with transaction(request.app.state.sessions) as s:
        current = s.get(Sweep, sweep.pk)
        assert current is not None  # sweeps are never deleted
        for link, trained in sweeps.pending_evaluations(s, current):
            job = sweeps.add_evaluation(s, current, link, trained)
            if job is not None:
                made.append(job.id)
    for job_id in made:
        request.app.state.metrics.jobs_submitted.labels(JobKind.evaluate).inc()
        send(request, job_id, JobKind.evaluate)


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

"""/v1/jobs: submit, list, read, cancel and delete jobs, and read their metrics history."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.deps import CurrentTenant, SessionDep, SettingsDep, TenantJob, forget_model, tenant_model
from api.problems import problem_responses
from api.schemas import (
    MAX_QUERY_INT,
    EvaluateRequest,
    JobOut,
    JobPage,
    JobRequest,
    MetricsOut,
)
from api.views import job_out
from core.settings import Settings
from core.states import ACTIVE, FINISHED, JobKind, JobState
from core.store import Job, jobs, leases, workers
from lipcore.spec import IMAGE_FOLDER, ExperimentSpec

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=problem_responses(401, 413, 422))
log = logging.getLogger("lbdn.api")


def require_json(request: Request) -> None:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise HTTPException(415, f"send the job as application/json, not {ctype or 'no content type'}")


def _resolve_image_folder(spec: ExperimentSpec, settings: Settings) -> ExperimentSpec:
    """Check a user's image folder (it must lie inside the server's data dir: jobs never read
    elsewhere) and fill in its shape and classes from the image headers (lipcore.data, no torch)."""
    if spec.dataset != IMAGE_FOLDER or spec.data_path is None:
        return spec
    from lipcore.data import resolve_spec
    from lipcore.data.image_folder import folder_root

    root = settings.datasets_dir
    try:  # lipcore's own resolution (no `~` expansion), so the folder checked is the folder read
        folder = folder_root(spec.data_path, root, confine=True)
        is_dir = folder.is_dir()
    except (ValueError, OSError) as e:  # OSError: e.g. a name too long for the file system
        raise HTTPException(422, f"spec.data_path: {e}") from None
    if not is_dir:
        raise HTTPException(422, f"spec.data_path: no folder {spec.data_path!r} in the server's data dir")
    try:
        return resolve_spec(spec, root)
    except (OSError, ValueError) as e:  # DatasetNotFoundError is an OSError
        raise HTTPException(422, f"spec.data_path: {e}") from None


def _check_active_jobs(session: Session, tenant: str, settings: Settings, idempotency_key: str | None) -> None:
    """429 while the tenant has LBDN_MAX_ACTIVE_JOBS_PER_TENANT jobs queued or running (a replay of
    an earlier request by its Idempotency-Key creates nothing and is let through). Two requests at
    the same instant may both pass, so the limit can be exceeded by the number of parallel submits."""
    if idempotency_key is not None and session.scalar(
        select(Job.id).where(Job.tenant == tenant, Job.idempotency_key == idempotency_key)
    ):
        return
    active = (
        session.scalar(select(func.count()).select_from(Job).where(Job.tenant == tenant, Job.status.in_(ACTIVE))) or 0
    )
    limit = settings.max_active_jobs_per_tenant
    if active >= limit:
        raise HTTPException(
            429,
            f"LBDN_MAX_ACTIVE_JOBS_PER_TENANT: your tenant has {active} jobs queued or running and the limit "
            f"is {limit}; wait for one to finish or cancel one",
            headers={"Retry-After": "60"},
        )


def _check_cost(spec: ExperimentSpec, settings: Settings) -> None:
    """422 naming the estimate and the limit when training `spec` would not fit a worker."""
    if not spec.resolved:
        return
    # torch is imported lazily, on the first training job submitted
    from lipcore.cost import estimate_memory

    try:
        estimate = estimate_memory(spec)
    except Exception:  # an estimate that fails must not fail the request (the worker will tell)
        log.exception("memory estimate failed for %s", spec.run_name())
        return
    limit = settings.max_job_memory_gb * 2**30
    if estimate.total_bytes > limit:
        raise HTTPException(
            422,
            f"spec: training needs about {estimate.describe()}, over LBDN_MAX_JOB_MEMORY_GB "
            f"({settings.max_job_memory_gb:g} GiB); use a smaller train_batch_size or scale",
        )


def check_devices(session: Session, settings: Settings, asked: int) -> None:
    """422 when a job asks for more devices than any live worker owns (the store's worker registry,
    core.store.workers: workers report what they own; the API imports no training code for it)."""
    if asked <= 1:
        return
    largest = workers.most_devices(session, settings.worker_seen_s)
    if largest is None or largest["devices"] < asked:
        owned = (
            f"the largest worker seen in the last {settings.worker_seen_s:g} s, {largest['name']}, owns "
            f"{largest['devices']}"
            if largest
            else f"no worker has reported its devices in the last {settings.worker_seen_s:g} s"
        )
        raise HTTPException(
            422,
            f"resources.devices: {asked} devices asked for one job, but {owned}; ask for fewer or start a "
            "worker with more (lbdn worker --devices, LBDN_WORKER_DEVICES)",
        )


def send(request: Request, job_id: str, kind: JobKind) -> None:
    """Send the job's message; if the broker is away the reaper sends it later (the DB has it)."""
    try:
        request.app.state.queue.enqueue(job_id, kind)
    except Exception as e:
        log.warning("could not send job %s to the broker (%s); the reaper will re-send it", job_id, e)
        with request.app.state.sessions() as s, s.begin():
            leases.mark_unsent(s, job_id)


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    dependencies=[Depends(require_json)],
    summary="Submit a training or evaluation job",
    responses=problem_responses(404, 415, 422, 429),
)
def submit_job(
    body: JobRequest,
    request: Request,
    response: Response,
    session: SessionDep,
    tenant: CurrentTenant,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> JobOut:
    resources = None
    if isinstance(body, EvaluateRequest):
        model = tenant_model(body.model_id, session, tenant)
        spec, params, model_id = model.spec, body.attack.model_dump(), model.id
        # torch-free: a model's task is on its card
        from lipcore.models.cards import get_card

        if get_card(str(spec.get("model"))).task != "classifier":
            raise HTTPException(
                422,
                f"model_id: the {spec.get('model')} regression has no classes to attack; evaluate an image classifier",
            )
    else:
        resolved = _resolve_image_folder(body.spec, settings)
        _check_cost(resolved, settings)
        resources = body.resources.model_dump() if body.resources else None
        check_devices(session, settings, body.resources.devices if body.resources else 1)
        spec = resolved.model_dump(mode="json")
        params, model_id = None, None
    _check_active_jobs(session, tenant, settings, idempotency_key)
    try:
        job, created = jobs.create_job(
            session,
            tenant=tenant,
            kind=JobKind(body.kind),
            spec=spec,
            params=params,
            model_id=model_id,
            idempotency_key=idempotency_key,
            req_hash=jobs.request_hash(jsonable_encoder(body)),
            resources=resources,
        )
    except jobs.IdempotencyConflict as e:
        raise HTTPException(422, str(e)) from None
    session.commit()
    if created:
        request.app.state.metrics.jobs_submitted.labels(job.kind).inc()
        send(request, job.id, job.kind)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    return job_out(job)


@router.get("", response_model=JobPage, summary="List your jobs, newest first")
def list_jobs(
    session: SessionDep,
    tenant: CurrentTenant,
    status: JobState | None = None,
    kind: JobKind | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(pattern=r"^[0-9]{1,18}$", description="next_cursor of the previous page")
    ] = None,
) -> JobPage:
    rows = jobs.list_jobs(
        session, tenant, status=status, kind=kind, limit=limit, before_pk=int(cursor) if cursor else None
    )
    nxt = str(rows[-1].pk) if len(rows) == limit else None
    return JobPage(items=[job_out(j) for j in rows], next_cursor=nxt)


@router.get("/{job_id}", response_model=JobOut, summary="A job's status, progress and latest metrics")
async def get_job(job: TenantJob) -> JobOut:
    # async: only the job's lookup (tenant_job) needs a thread; building the answer is quick CPU
    return job_out(job)


@router.get("/{job_id}/metrics", response_model=MetricsOut, summary="Per-epoch metrics history")
def get_metrics(
    job: TenantJob,
    session: SessionDep,
    since_epoch: Annotated[int, Query(ge=0, le=MAX_QUERY_INT, description="epochs after this one")] = 0,
) -> MetricsOut:
    return MetricsOut(job_id=job.id, items=jobs.metrics_since(session, job.id, since_epoch))


@router.post(
    "/{job_id}/cancel", response_model=JobOut, summary="Stop a job at its next step", responses=problem_responses(409)
)
def cancel_job(job: TenantJob, session: SessionDep) -> JobOut:
    if job.status in FINISHED:
        raise HTTPException(409, f"job {job.id} has already {job.status}; nothing to cancel")
    job = jobs.request_cancel(session, job)
    session.commit()
    return job_out(job)


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    summary="Remove a finished job and its artifacts",
    responses=problem_responses(409),
)
def delete_job(job: TenantJob, session: SessionDep, request: Request, settings: SettingsDep) -> Response:
    if job.status not in FINISHED:
        raise HTTPException(409, f"job {job.id} is {job.status}; cancel it and wait until it has stopped")
    jobs.delete_job(session, job)
    session.commit()
    request.app.state.model_cache.forget(settings.job_dir(job.id))
    forget_model(request, job.id)
    shutil.rmtree(Path(settings.job_dir(job.id)), ignore_errors=True)
    return Response(status_code=204)

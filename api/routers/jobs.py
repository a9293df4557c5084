"""/v1/jobs: submit, list, read, cancel and delete jobs, and read their metrics history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder

from api.deps import CurrentTenant, SessionDep, TenantJob, forget_model, require_json, tenant_model
from api.problems import problem_responses
from api.schemas import (
    MAX_QUERY_INT,
    EvaluateRequest,
    JobOut,
    JobPage,
    JobRequest,
    MetricsOut,
)
from api.services import Services
from api.views import job_out
from core import submit
from core.states import FINISHED, JobKind, JobState
from core.store import jobs

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=problem_responses(401, 413, 422))


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
    response: Response,
    session: SessionDep,
    tenant: CurrentTenant,
    services: Services,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> JobOut:
    req_hash = jobs.request_hash(jsonable_encoder(body))
    if isinstance(body, EvaluateRequest):
        submit.check_idempotency_key(idempotency_key)  # before the model's lookup, as for training
        model = tenant_model(body.model_id, session, tenant)
        ask = submit.JobAsk(
            model=model, params=body.attack.model_dump(), idempotency_key=idempotency_key, req_hash=req_hash
        )
    else:
        resources = body.resources.model_dump() if body.resources else None
        ask = submit.JobAsk(spec=body.spec, resources=resources, idempotency_key=idempotency_key, req_hash=req_hash)
    job, created = submit.submit_job(session, tenant=tenant, settings=services.settings, ask=ask)
    session.commit()
    if created:
        services.send([(job.id, job.kind)])
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
    """200: the job is `cancelled` (it was queued) or `running` with cancel_requested, and then ends
    `cancelled` (core.store.leases.finish); 409: it had already finished (also when it finished
    while this request ran)."""
    if job.status not in FINISHED:
        job = jobs.request_cancel(session, job)
        session.commit()
        if job.status in (JobState.queued, JobState.running, JobState.cancelled):
            return job_out(job)
    raise HTTPException(409, f"job {job.id} has already {job.status}; nothing to cancel")


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    summary="Remove a finished job and its artifacts",
    responses=problem_responses(409),
)
def delete_job(job: TenantJob, session: SessionDep, request: Request, services: Services) -> Response:
    if job.status not in FINISHED:
        raise HTTPException(409, f"job {job.id} is {job.status}; cancel it and wait until it has stopped")
    jobs.delete_job(session, job)
    session.commit()
    services.model_cache.forget(services.settings.job_dir(job.id))
    forget_model(request, job.id)
    services.artifacts.delete(job.id)  # its folder (local) or objects (S3)
    return Response(status_code=204)

"""/v1/jobs: submit, list, read, cancel and delete jobs, and read their metrics history."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder

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
from core import submit
from core.states import FINISHED, JobKind, JobState
from core.store import jobs, leases

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=problem_responses(401, 413, 422))
log = logging.getLogger("lbdn.api")


def require_json(request: Request) -> None:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise HTTPException(415, f"send the job as application/json, not {ctype or 'no content type'}")


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
    submit.check_idempotency_key(idempotency_key)
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
        submit.check_dataset(spec, settings)  # its test data must be there: say so now, not after the queue
    else:
        spec = submit.prepare_training(body.spec, settings)
        resources = body.resources.model_dump() if body.resources else None
        submit.check_devices(session, settings, body.resources.devices if body.resources else 1)
        params, model_id = None, None
    job, created = submit.submit(
        session,
        tenant=tenant,
        settings=settings,
        kind=JobKind(body.kind),
        spec=spec,
        params=params,
        model_id=model_id,
        idempotency_key=idempotency_key,
        req_hash=jobs.request_hash(jsonable_encoder(body)),
        resources=resources,
    )
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
def delete_job(job: TenantJob, session: SessionDep, request: Request, settings: SettingsDep) -> Response:
    if job.status not in FINISHED:
        raise HTTPException(409, f"job {job.id} is {job.status}; cancel it and wait until it has stopped")
    jobs.delete_job(session, job)
    session.commit()
    request.app.state.model_cache.forget(settings.job_dir(job.id))
    forget_model(request, job.id)
    shutil.rmtree(Path(settings.job_dir(job.id)), ignore_errors=True)
    return Response(status_code=204)

"""/v1/jobs: submit, list (filtered, sorted), read, label, cancel and delete jobs, and read their
metrics history (JSON or CSV)."""

from __future__ import annotations

import csv
import io
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder

from api.deps import CurrentTenant, SessionDep, TenantJob, forget_model, require_json, tenant_model
from api.problems import problem_responses
from api.schemas import (
    MAX_QUERY_INT,
    EvaluateRequest,
    JobOut,
    JobPage,
    JobPatch,
    JobRequest,
    MetricsOut,
)
from api.services import Services
from api.views import job_out, job_views
from core import submit
from core.states import FINISHED, JobKind, JobState
from core.store import jobs, sweeps
from core.store.job_search import JobQuery, cursor_of, search_jobs

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
            model=model,
            params=body.attack.model_dump(),
            idempotency_key=idempotency_key,
            req_hash=req_hash,
            labels=body.labels(),
        )
    else:
        resources = body.resources.model_dump() if body.resources else None
        ask = submit.JobAsk(
            spec=body.spec,
            resources=resources,
            idempotency_key=idempotency_key,
            req_hash=req_hash,
            labels=body.labels(),
        )
    job, created = submit.submit_job(session, tenant=tenant, settings=services.settings, ask=ask)
    session.commit()
    if created:
        services.send([(job.id, job.kind)])
    else:
        response.headers["Idempotent-Replayed"] = "true"
    return job_out(job)


SORT_HELP = (
    "-created (newest first, the default) or created; or a final metric, largest first with '-': "
    "-cert_acc_36, tightness, -test_acc (jobs without it come last)"
)
_Text = Annotated[str | None, Query(max_length=100)]


def job_query(
    status: JobState | None = None,
    kind: JobKind | None = None,
    tag: Annotated[list[str] | None, Query(max_length=20, description="jobs with every tag given")] = None,
    name: Annotated[str | None, Query(max_length=200, description="a substring of the name, any case")] = None,
    model: _Text = None,
    layer: _Text = None,
    dataset: _Text = None,
    gamma: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    seed: Annotated[int | None, Query(ge=0, le=MAX_QUERY_INT)] = None,
    sweep: Annotated[str | None, Query(max_length=40, description="a sweep's id")] = None,
    sort: Annotated[str, Query(pattern=r"^-?[a-z][a-z0-9_]{0,63}$", description=SORT_HELP)] = "-created",
) -> JobQuery:
    """GET /v1/jobs's filters (spec fields match exactly) and order (core.store.job_search)."""
    tags = tuple(t.strip().lower() for t in tag or ())
    return JobQuery(status, kind, tags, name, model, layer, dataset, gamma, seed, sweep, sort)


@router.get("", response_model=JobPage, summary="List your jobs: filtered, newest first or sorted by a metric")
def list_jobs(
    session: SessionDep,
    tenant: CurrentTenant,
    query: Annotated[JobQuery, Depends(job_query)],
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None,
        Query(pattern=r"^[0-9]{1,18}(:(null|-?[0-9.e+-]{1,30}))?$", description="next_cursor of the previous page"),
    ] = None,
) -> JobPage:
    try:
        rows = search_jobs(session, tenant, query, limit=limit, cursor=cursor)
    except ValueError:  # a cursor value that is no number (the pattern lets "1.2.3" through)
        raise HTTPException(422, f"cursor: {cursor!r} is not a next_cursor of this list") from None
    nxt = cursor_of(query, rows[-1]) if len(rows) == limit else None
    return JobPage(items=job_views(session, rows), next_cursor=nxt)


@router.get("/{job_id}", response_model=JobOut, summary="A job's status, progress and latest metrics")
def get_job(job: TenantJob, session: SessionDep) -> JobOut:
    return job_out(job, sweeps.sweeps_of(session, [job.id]).get(job.id))


@router.patch(
    "/{job_id}",
    response_model=JobOut,
    dependencies=[Depends(require_json)],
    summary="Name, tag or annotate a job (any state)",
    responses=problem_responses(404, 415),
)
def label_job(body: JobPatch, job: TenantJob, session: SessionDep) -> JobOut:
    """The labels in the body are set (null or [] clears one); those left out are kept."""
    changes = {field: getattr(body, field) for field in body.model_fields_set}
    if changes:
        jobs.set_labels(session, job, changes)
        session.commit()
    return job_out(job, sweeps.sweeps_of(session, [job.id]).get(job.id))


@router.get(
    "/{job_id}/metrics",
    response_model=MetricsOut,
    summary="Per-epoch metrics history (JSON, or CSV with ?format=csv)",
    responses={200: {"content": {"text/csv": {}}}},
)
def get_metrics(
    job: TenantJob,
    session: SessionDep,
    since_epoch: Annotated[int, Query(ge=0, le=MAX_QUERY_INT, description="epochs after this one")] = 0,
    format: Annotated[Literal["json", "csv"], Query(description="csv: one row per epoch, a header row")] = "json",
) -> Any:
    items = jobs.metrics_since(session, job.id, since_epoch)
    if format == "csv":
        return Response(
            metrics_csv(items),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{job.id}-metrics.csv"'},
        )
    return MetricsOut(job_id=job.id, items=items)


def metrics_csv(items: list[dict[str, Any]]) -> str:
    """Epoch rows as CSV: `epoch` first, then every other key in first-seen order; a key an epoch
    lacks is an empty cell; nested values (lists, objects) are written as JSON."""
    columns = list(dict.fromkeys(["epoch", *(k for row in items for k in row)]))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for row in items:
        writer.writerow({k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in row.items()})
    return out.getvalue()


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
            return job_out(job, sweeps.sweeps_of(session, [job.id]).get(job.id))
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

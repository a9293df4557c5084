"""Dependencies of the routes: settings, a DB session, the caller's tenant, a job or model of theirs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from cachetools import TTLCache
from fastapi import Depends, HTTPException, Path, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from api.auth import OPEN_TENANT, CurrentTenant, current_tenant
from api.services import services_of
from core.settings import Settings
from core.states import MODEL_KINDS, JobState
from core.store import Job, jobs

__all__ = [  # OPEN_TENANT, CurrentTenant and current_tenant: api.auth's, re-exported for the routers
    "OPEN_TENANT",
    "CurrentTenant",
    "JobId",
    "SessionDep",
    "SettingsDep",
    "TenantJob",
    "TenantModel",
    "TenantModelId",
    "current_tenant",
    "forget_model",
    "get_session",
    "get_settings",
    "known_models",
    "require_json",
    "tenant_job",
    "tenant_model",
    "tenant_model_id",
]


async def get_settings(request: Request) -> Settings:
    """The app's Settings (given to create_app); async, so that reading it costs no thread hop."""
    return services_of(request).settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session per request that holds a DB connection only while a statement or a write is in
    flight (core.store.ReleasingSession); routes that write commit themselves before they answer.

    `async def` on purpose: making the session takes no I/O, and its teardown (after the response is
    sent from FastAPI 0.118 on, just before it in earlier releases) needs no thread-pool thread; it
    finds the connection already given back, except after a write that failed, which close() rolls back.
    """
    session = services_of(request).request_sessions()
    try:
        yield session
    finally:
        session.close()


def require_json(request: Request) -> None:
    """415 for a body that is not JSON (a route dependency of the routes that take one)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise HTTPException(415, f"send the job as application/json, not {ctype or 'no content type'}")


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
JobId = Annotated[str, Path(max_length=40, description="a job id, e.g. job_1f2e...")]


def tenant_job(job_id: JobId, session: SessionDep, tenant: CurrentTenant) -> Job:
    """The caller's job `job_id`; 404 for unknown ids and for other tenants' jobs alike."""
    job = jobs.get_job(session, tenant, job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job


TenantJob = Annotated[Job, Depends(tenant_job)]


def tenant_model(model_id: Annotated[str, Path(max_length=40)], session: SessionDep, tenant: CurrentTenant) -> Job:
    """The caller's model: a succeeded training job or an import (born succeeded); else 404."""
    job = jobs.get_job(session, tenant, model_id)
    if job is None or job.kind not in MODEL_KINDS or job.status != JobState.succeeded:
        raise HTTPException(404, f"no trained model {model_id!r} (models are succeeded training jobs and imports)")
    return job


TenantModel = Annotated[Job, Depends(tenant_model)]


def known_models(ttl_s: float) -> TTLCache[tuple[str, str], bool]:
    """(tenant, model id) pairs recently found to be a trained model, for `ttl_s` seconds.

    A model never changes once it exists (a succeeded training job or an import); it can only be
    deleted. Certify clients call the same model many times a second, and its lookup (a thread hop
    and a query) was a large share of a certify request's API CPU, which delays every poll and
    /healthz behind it. A deletion through this process forgets the model at once (forget_model);
    one through another process is seen by the certify route's weights-file check (404) until ttl_s
    passes. Used on the event loop only (no lock needed).
    """
    return TTLCache(maxsize=4096, ttl=ttl_s)


def forget_model(request: Request, model_id: str) -> None:
    """Drop `model_id` from the app's known_models (it was deleted)."""
    known = services_of(request).known_models
    for key in [k for k in list(known.keys()) if k[1] == model_id]:
        known.pop(key, None)


def _model_exists(request: Request, tenant: str, model_id: str) -> None:
    with services_of(request).sessions() as session:
        tenant_model(model_id, session, tenant)  # 404 if not a model of this tenant


async def tenant_model_id(
    model_id: Annotated[str, Path(max_length=40)], request: Request, tenant: CurrentTenant
) -> str:
    """The id of the caller's model `model_id` (as tenant_model; 404 else), looked up at most once
    per LBDN_KEY_CACHE_S per model and tenant (known_models)."""
    known = services_of(request).known_models
    if (tenant, model_id) not in known:
        await run_in_threadpool(_model_exists, request, tenant, model_id)
        known[(tenant, model_id)] = True
    return model_id


TenantModelId = Annotated[str, Depends(tenant_model_id)]

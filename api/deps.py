"""Dependencies of the routes: settings, a DB session, the caller's tenant, a job or model of theirs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from sqlalchemy.orm import Session

from api.auth import OPEN_TENANT, CurrentTenant, current_tenant
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
    "current_tenant",
    "get_session",
    "get_settings",
    "tenant_job",
    "tenant_model",
]


def get_settings(request: Request) -> Settings:
    """The app's Settings (given to create_app)."""
    settings: Settings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session per request that holds a DB connection only while a statement or a write is in
    flight (core.store.ReleasingSession); routes that write commit themselves before they answer.

    `async def` on purpose: making the session takes no I/O, and its teardown (FastAPI 0.165 runs
    request-scoped teardown after the response is sent) needs no thread-pool thread; it finds the
    connection already given back, except after a write that failed, which close() rolls back.
    """
    session = request.app.state.request_sessions()
    try:
        yield session
    finally:
        session.close()


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

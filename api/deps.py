"""Dependencies of the routes: settings, a DB session, the caller's tenant, a job or model of theirs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from worker.settings import Settings
from worker.store import Job, jobs, keys

OPEN_TENANT = "local"  # the tenant of every request while no API key exists (loopback only)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session per request that holds a DB connection only while a statement or a write is in
    flight (worker.store.ReleasingSession); routes that write commit themselves before they answer.

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
_bearer = HTTPBearer(auto_error=False, description="an API key made with `lbdn keys create`")


def current_tenant(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The tenant of the bearer key; with no key configured at all, the open tenant."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is not None:
        tenant = keys.tenant_for_secret(session, credentials.credentials)
        if tenant is None:
            raise HTTPException(401, "unknown or revoked API key", headers=challenge)
        return tenant
    if keys.any_active_key(session):
        raise HTTPException(401, "this server needs an API key: send 'Authorization: Bearer <key>'", headers=challenge)
    return OPEN_TENANT


CurrentTenant = Annotated[str, Depends(current_tenant)]
JobId = Annotated[str, Path(max_length=40, description="a job id, e.g. job_1f2e...")]


def tenant_job(job_id: JobId, session: SessionDep, tenant: CurrentTenant) -> Job:
    """The caller's job `job_id`; 404 for unknown ids and for other tenants' jobs alike."""
    job = jobs.get_job(session, tenant, job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job


TenantJob = Annotated[Job, Depends(tenant_job)]


def tenant_model(model_id: Annotated[str, Path(max_length=40)], session: SessionDep, tenant: CurrentTenant) -> Job:
    """The caller's trained model: a succeeded training job with a weights file; else 404."""
    job = jobs.get_job(session, tenant, model_id)
    if job is None or job.kind != "train" or job.status != "succeeded":
        raise HTTPException(404, f"no trained model {model_id!r} (models are succeeded training jobs)")
    return job


TenantModel = Annotated[Job, Depends(tenant_model)]

"""Per-tenant limits of POST /v1/models/import: imports per minute and bytes of imported models kept.

Both are counted in the job store (an import is a job of kind "import" whose result records the
bytes of its model.safetensors), so they hold across API processes sharing one store. Deleting an
import removes its row, which would also free its place in the minute's count: each API process
therefore also remembers the times of the imports it made itself and counts whichever is larger.
As with LBDN_MAX_ACTIVE_JOBS_PER_TENANT, requests arriving at the same instant may all pass the check,
so a limit can be exceeded by the number of imports made in parallel.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from datetime import timedelta
from typing import Any

from fastapi import HTTPException, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import CurrentTenant, SessionDep
from api.services import AppServices, Services, services_of
from core.artifacts import ArtifactStore
from core.settings import Settings
from core.states import JobKind
from core.store import Job
from core.store.tables import utcnow
from lipcore.rundir import MODEL

WINDOW_S = 60.0
BYTES_RETRY_S = 3600  # stored bytes free up only when the tenant deletes models


class RecentImports:
    """This process's own import times per tenant (monotonic seconds), for the minute's count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: dict[str, deque[float]] = {}

    def add(self, tenant: str) -> None:
        with self._lock:
            self._times.setdefault(tenant, deque()).append(time.monotonic())

    def in_window(self, tenant: str) -> list[float]:
        """Seconds since each of the tenant's imports of the last minute, oldest first."""
        now = time.monotonic()
        with self._lock:
            times = self._times.get(tenant)
            while times and now - times[0] >= WINDOW_S:
                times.popleft()
            if times is not None and not times:
                del self._times[tenant]
            return [now - t for t in times or ()]


def _too_many(settings: Settings, count: int, oldest_age_s: float) -> HTTPException:
    wait = max(1, math.ceil(WINDOW_S - oldest_age_s))
    return HTTPException(
        429,
        f"LBDN_IMPORTS_PER_MINUTE: your tenant made {count} imports in the last minute and the limit is "
        f"{settings.imports_per_minute}; retry in {wait} s",
        headers={"Retry-After": str(wait)},
    )


def check_rate(request: Request, session: Session, tenant: str, settings: Settings) -> None:
    """429 with Retry-After once the tenant made LBDN_IMPORTS_PER_MINUTE imports in the last minute."""
    since = utcnow() - timedelta(seconds=WINDOW_S)
    stored = session.scalars(
        select(Job.created_at)
        .where(Job.tenant == tenant, Job.kind == JobKind.import_, Job.created_at > since)
        .order_by(Job.created_at)
    ).all()
    local = services_of(request).recent_imports.in_window(tenant)
    limit = settings.imports_per_minute
    if len(stored) >= limit and len(stored) >= len(local):
        raise _too_many(settings, len(stored), (utcnow() - stored[-limit]).total_seconds())
    if len(local) >= limit:
        raise _too_many(settings, len(local), local[-limit])


def stored_bytes(session: Session, tenant: str, store: ArtifactStore) -> int:
    """Bytes of the tenant's imported models (their result's stored_bytes, else the stored file's size)."""
    total = 0
    for job_id, result in session.execute(
        select(Job.id, Job.result).where(Job.tenant == tenant, Job.kind == JobKind.import_)
    ):
        size: Any = (result or {}).get("stored_bytes")
        if not isinstance(size, int):
            found = store.head(job_id, MODEL)
            size = found.size if found is not None else 0
        total += size
    return total


def check_bytes(session: Session, tenant: str, services: AppServices, adding: int = 0) -> None:
    """429 when the tenant's imported models (plus `adding` bytes) pass LBDN_MAX_IMPORT_BYTES_PER_TENANT."""
    kept = stored_bytes(session, tenant, services.artifacts)
    limit = services.settings.max_import_bytes_per_tenant
    if kept + adding > limit or (adding == 0 and kept >= limit):
        raise HTTPException(
            429,
            f"LBDN_MAX_IMPORT_BYTES_PER_TENANT: your tenant's imported models take {kept:,} bytes"
            + (f", this one {adding:,} more" if adding else "")
            + f", and the limit is {limit:,}; delete imported models (DELETE /v1/jobs/{{id}}) to make room",
            headers={"Retry-After": str(BYTES_RETRY_S)},
        )


def check_import_limits(request: Request, session: SessionDep, tenant: CurrentTenant, services: Services) -> None:
    """Both limits, checked before the upload is read (a refused import costs no body parsing)."""
    check_rate(request, session, tenant, services.settings)
    check_bytes(session, tenant, services)

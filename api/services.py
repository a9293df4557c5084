"""The API's application services: everything a route needs besides its request, made once per app
(api.main.build_services) and held in one typed object, `app.state.services`.

Routes take the `Services` dependency; code that has only the request (dependencies of other
dependencies, middleware helpers) calls `services_of(request)`. Nothing else lives on `app.state`.
The classes are imported for type checking only: their modules import this one for `services_of`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, Request
from starlette.requests import HTTPConnection

from core.queue import send_jobs
from core.states import JobKind

if TYPE_CHECKING:
    from anyio import CapacityLimiter
    from cachetools import TTLCache
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from api.auth import AuthFailures, AuthMode
    from api.batcher import CertifyBatcher, CertifySlots
    from api.certify import AttackSlots
    from api.certify_pool import CertifyPool
    from api.import_limits import RecentImports
    from api.metrics import ServiceMetrics
    from api.model_cache import ModelCache
    from api.routers.events import StreamCount
    from core.artifacts import ArtifactStore
    from core.queue import CeleryQueue
    from core.settings import Settings
    from core.store import ReleasingSession


@dataclass(frozen=True)
class Limiters:
    """Thread budgets of their own (made in the lifespan: they belong to the running event loop):
    attack searches, event-stream polls and readiness checks, so that none of them can take the
    threads that polls need (api.main.pool_sizes sizes the DB pool to match)."""

    attacks: CapacityLimiter
    streams: CapacityLimiter
    health: CapacityLimiter


@dataclass
class AppServices:
    """One app's settings, store, queue, caches, limits and certify machinery."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]  # short sessions of code off the request path
    request_sessions: sessionmaker[ReleasingSession]  # a route's session (api.deps.get_session)
    queue: CeleryQueue
    metrics: ServiceMetrics
    auth_mode: AuthMode
    key_cache: TTLCache[str, str]  # api.auth.key_cache
    known_models: TTLCache[tuple[str, str], bool]  # api.deps.known_models
    auth_failures: AuthFailures
    model_cache: ModelCache  # the attack's and the export's models
    certify_pool: CertifyPool
    certify_batcher: CertifyBatcher
    certify_slots: CertifySlots
    attack_slots: AttackSlots
    stream_count: StreamCount
    recent_imports: RecentImports
    artifacts: ArtifactStore  # jobs' files (LBDN_ARTIFACTS: this host's folder or S3)
    up_since: float = field(
        default_factory=time.time
    )  # UNIX time this API started (its supervisor's for replicas): the start-up re-send's cutoff
    keys_seen: bool = False  # api.auth: once a key exists the "auto" mode is closed for good
    started: Limiters | None = None  # set by the lifespan

    @property
    def limiters(self) -> Limiters:
        if self.started is None:
            raise RuntimeError("the app's lifespan has not started (use TestClient as a context manager)")
        return self.started

    def send(self, made: Sequence[tuple[str, JobKind]]) -> None:
        """Send committed queued jobs (core.queue.send_jobs: a broker away leaves them to the
        reaper) and count them as submitted."""
        for _, kind in made:
            self.metrics.jobs_submitted.labels(kind).inc()
        send_jobs(self.queue, self.sessions, made)


def services_of(where: HTTPConnection | FastAPI) -> AppServices:
    """The AppServices of the app serving `where` (a request, or the app itself)."""
    app = where if isinstance(where, FastAPI) else where.app
    services: AppServices = app.state.services
    return services


async def get_services(request: Request) -> AppServices:
    # async: a plain def dependency would cost every request a thread-pool hop for an attribute read
    return services_of(request)


Services = Annotated[AppServices, Depends(get_services)]

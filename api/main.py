"""The FastAPI app: `create_app(settings)`; `uvicorn --factory api.main:create_app` serves it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import anyio
import anyio.to_thread
from fastapi import FastAPI

from api import problems
from api.auth import AuthFailures, OpsGuard, auth_mode, key_cache, listen_problem
from api.batcher import CertifyBatcher, CertifySlots
from api.certify import AttackSlots
from api.certify_pool import CertifyLimits, CertifyPool
from api.deps import known_models
from api.import_limits import RecentImports
from api.metrics import ServiceMetrics
from api.middleware import LimitAndMeasure
from api.model_cache import ModelCache
from api.routers import (
    artifacts,
    catalog,
    dashboard,
    docs,
    events,
    health,
    job_sweep,
    jobs,
    model_io,
    models,
    paper,
    sweeps,
)
from api.routers.events import StreamCount
from api.services import AppServices, Limiters, services_of
from api.shedding import ShedLoad
from core.queue import CeleryQueue
from core.reaper import reap_and_resend
from core.settings import Settings, get_settings
from core.store import init_db, make_engine, releasing_session_factory, session_factory

log = logging.getLogger("lbdn.api")
STREAM_THREADS = 4  # event-stream polls at once, however many streams are open
HEALTH_THREADS = 2  # /readyz checks at once


def pool_sizes(settings: Settings) -> dict[str, int | float]:
    """The API's DB pool: one connection for every thread that can hold one at the same time
    (sync routes, stream polls, readiness checks, attack threads), so a thread never waits for a
    connection; pool_timeout is only a backstop. A connection is held only within one thread call
    (api.deps.get_session), so no size can deadlock; these sizes only keep waits away."""
    threads = settings.api_threads + STREAM_THREADS + HEALTH_THREADS + settings.certify_attacks_total
    return {"pool_size": threads // 2, "max_overflow": threads - threads // 2, "pool_timeout": 10.0}


DESCRIPTION = """Train Lipschitz-bounded deep networks (sandwich layers, Wang & Manchester, ICML 2023)
and certify inputs against them. Submit a job, follow it, download its checkpoint, and ask for
certified l2 radii of your own inputs. Errors are application/problem+json."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    services = services_of(app)
    services.settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    # Thread and connection budgets, sized together (see pool_sizes): sync routes and dependencies
    # share anyio's default limiter; attack searches, event-stream polls and readiness checks get
    # limiters of their own, so neither CPU work nor streams can take the threads pollers need.
    anyio.to_thread.current_default_thread_limiter().total_tokens = services.settings.api_threads
    services.started = Limiters(
        attacks=anyio.CapacityLimiter(services.settings.certify_attacks_total),
        streams=anyio.CapacityLimiter(STREAM_THREADS),
        health=anyio.CapacityLimiter(HEALTH_THREADS),
    )
    init_db(services.engine)
    # Jobs queued before a restart may have lost their messages (a broker without persistence):
    # re-send them, off the start-up path so a slow broker does not delay serving.
    threading.Thread(target=_resend_at_startup, args=(services,), name="lbdn-resend", daemon=True).start()
    yield
    services.certify_pool.shutdown()
    services.engine.dispose()
    services.queue.close()


def _resend_at_startup(services: AppServices) -> None:
    # This pass re-sends everything anyway; setting the broker's marker spares the workers a second.
    with suppress(Exception):
        services.queue.broker_lost_messages()
    try:
        # every queued job not sent since this API came up: the replicas of one `lbdn api
        # --processes N` share the moment, so the first pass re-sends and the others (and a replica
        # restarted later) find nothing left
        reap_and_resend(services.sessions, services.queue, services.settings, sent_before=services.up_since)
    except Exception:
        log.exception("re-sending queued jobs at start-up failed")


def build_services(settings: Settings, up_since: float | None = None) -> AppServices:
    """Everything the routes share, made once per app (the limiters wait for the lifespan)."""
    engine = make_engine(settings.db_url, **pool_sizes(settings))
    sessions = session_factory(engine)
    certify_pool = CertifyPool(
        settings.certify_concurrency,
        settings.certify_nice,
        CertifyLimits(
            settings.max_certify_inputs,
            settings.max_image_pixels,
            settings.model_cache_size,
            batch_inputs=settings.certify_batch_max_inputs,
            json_depth=settings.certify_json_max_depth,
        ),
    )
    return AppServices(
        settings=settings,
        engine=engine,
        sessions=sessions,
        request_sessions=releasing_session_factory(engine),
        queue=CeleryQueue(settings),  # core.queue.JobQueue: enqueue by task name, ping
        metrics=ServiceMetrics(sessions),
        auth_mode=auth_mode(settings),  # api.auth: open only by choice, or on loopback before any key
        key_cache=key_cache(settings.key_cache_s),
        known_models=known_models(settings.key_cache_s),  # certify's model lookups (api.deps)
        auth_failures=AuthFailures(settings.auth_failures_per_window, settings.auth_failure_window_s),
        model_cache=ModelCache(settings.model_cache_size),  # the attack's models (api.certify_pool)
        certify_pool=certify_pool,
        # api.batcher: concurrent requests of a model in one forward
        certify_batcher=CertifyBatcher(
            certify_pool,
            processes=settings.certify_concurrency,
            max_requests=settings.certify_batch_max_requests,
            wait_s=settings.certify_batch_wait_ms / 1000,
        ),
        certify_slots=CertifySlots(settings.certify_slots_per_tenant, settings.certify_slots_total),
        attack_slots=AttackSlots(
            settings.certify_attacks_per_tenant, settings.certify_attacks_total, settings.certify_attack_timeout_s
        ),
        stream_count=StreamCount(settings.max_streams_per_tenant),  # api.routers.events
        recent_imports=RecentImports(),  # api.import_limits
        artifacts=settings.artifact_store(),  # core.artifacts: artifacts, certify, export, import, delete
        up_since=time.time() if up_since is None else up_since,
    )


def create_app(settings: Settings | None = None, up_since: float | None = None) -> FastAPI:
    """The app; `up_since` (UNIX time) is when its API started: its supervisor's start for a replica."""
    settings = settings or get_settings()
    if (refused := listen_problem(settings)) is not None:
        raise RuntimeError(refused)
    app = FastAPI(
        title="lbdn-service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # /docs is api.routers.docs (Swagger UI from the package, not a CDN); ReDoc has no offline copy
        docs_url=None,
        redoc_url=None,
        openapi_tags=[
            {"name": "jobs", "description": "training and evaluation jobs"},
            {"name": "models", "description": "trained models and certificates"},
            {"name": "sweeps", "description": "grids of jobs and the paper's experiments as presets"},
        ],
    )
    app.state.services = services = build_services(settings, up_since)
    problems.install(app)
    for router in (jobs.router, events.router, artifacts.router, models.router, health.router):
        app.include_router(router)
    for router in (sweeps.router, paper.router, job_sweep.router):  # sweeps of jobs and the paper's presets
        app.include_router(router)
    app.include_router(catalog.router)  # /v1/catalog: model cards and layer families
    app.include_router(model_io.router)  # /v1/models/import, /v1/models/{id}/export
    # inside LimitAndMeasure, so that shed requests are counted and timed like the others
    app.add_middleware(
        ShedLoad,
        places=min(settings.max_in_flight, settings.api_threads),
        max_wait_s=settings.max_queue_ms / 1000,
        metrics=services.metrics,
    )
    app.add_middleware(LimitAndMeasure, max_bytes=settings.max_upload_bytes, metrics=services.metrics)
    app.add_middleware(OpsGuard, token=settings.metrics_token)  # /metrics, /readyz: token or loopback
    app.include_router(dashboard.router)  # the browser UI at / (no key needed to load the page)
    app.include_router(docs.router)  # /docs: Swagger UI, its assets served from the package
    return app

"""/healthz (the process answers), /readyz (database and broker reachable), /metrics (Prometheus).

/healthz is `async def` with no dependency: it runs on the event loop, so it answers while every
thread and every DB connection is busy (a liveness probe must not fail because of load). /readyz
runs its checks on threads of its own (AppServices.limiters.health) under a short deadline, and says
only which dependency failed: the error text is logged, never sent (it can hold host names, users).
Access rules (who may call /readyz and /metrics) are added as route dependencies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.problems import problem
from api.schemas import Health
from api.services import services_of
from core.store import ping

router = APIRouter(tags=["health"])
log = logging.getLogger("lbdn.api")
READY_TIMEOUT_S = 3.0  # per check; a probe that waits longer than this is as good as a failure


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    return Health(status="ok")


async def _check(request: Request, name: str, check: Callable[[], None]) -> str:
    try:
        with anyio.fail_after(READY_TIMEOUT_S):
            await anyio.to_thread.run_sync(check, limiter=services_of(request).limiters.health, abandon_on_cancel=True)
        return "ok"
    except TimeoutError:
        log.warning("readiness: %s did not answer within %.0f s", name, READY_TIMEOUT_S)
        return "timeout"
    except Exception:
        log.warning("readiness: %s unreachable", name, exc_info=True)
        return "unreachable"


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: database and broker reachable",
    responses={503: {"description": "a dependency is unreachable (problem+json)"}},
)
async def readyz(request: Request) -> Health | JSONResponse:
    services = services_of(request)
    checks = {
        "database": await _check(request, "database", lambda: ping(services.engine)),
        "broker": await _check(request, "broker", lambda: services.queue.ping(timeout=READY_TIMEOUT_S)),
    }
    if all(v == "ok" for v in checks.values()):
        return Health(status="ready", checks=checks)
    failed = ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok")
    return problem(503, f"not ready: {failed}", checks=checks)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics", include_in_schema=True)
def metrics(request: Request) -> Response:
    return Response(generate_latest(services_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)

"""/healthz (the process answers), /readyz (database and broker reachable), /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.problems import problem
from api.schemas import Health
from worker.queue import broker_ping
from worker.store import ping

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: database and broker reachable",
    responses={503: {"description": "a dependency is unreachable (problem+json)"}},
)
def readyz(request: Request) -> Health | JSONResponse:
    checks: dict[str, str] = {}
    for name, check in (
        ("database", lambda: ping(request.app.state.engine)),
        ("broker", lambda: broker_ping(request.app.state.celery)),
    ):
        try:
            check()
            checks[name] = "ok"
        except Exception as e:  # noqa: BLE001 - report any failure as "not ready"
            checks[name] = f"unreachable: {type(e).__name__}: {e}"[:300]
    if all(v == "ok" for v in checks.values()):
        return Health(status="ready", checks=checks)
    failed = ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok")
    return problem(503, f"not ready: {failed}", checks=checks)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics", include_in_schema=True)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

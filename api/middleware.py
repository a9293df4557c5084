"""Pure ASGI middleware (streaming-safe, unlike BaseHTTPMiddleware): request size limit and metrics."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import ServiceMetrics
from api.problems import problem


class LimitAndMeasure:
    """413 for bodies over `max_bytes` (declared or streamed), and request counts/latency by route."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: ServiceMetrics) -> None:
        self.app, self.max_bytes, self.metrics = app, max_bytes, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = {"code": 500}
        too_big = f"the request body is larger than LBDN_MAX_UPLOAD_BYTES ({self.max_bytes} bytes)"
        declared = dict(scope["headers"]).get(b"content-length", b"").decode()
        if declared.isdigit() and int(declared) > self.max_bytes:
            status["code"] = 413
            await problem(413, too_big)(scope, receive, send)
            return self._observe(scope, 413, t0)
        seen = {"bytes": 0, "over": False, "started": False}

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen["bytes"] += len(message.get("body", b""))
                if seen["bytes"] > self.max_bytes:
                    seen["over"] = True
                    raise BodyTooLarge(too_big)
            return message

        async def watched_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                if seen["over"]:  # whatever the app made of the cut-off body, the answer is 413
                    seen["started"] = True
                    status["code"] = 413
                    await problem(413, too_big)(scope, _nothing, send)
                    return
                status["code"] = message["status"]
            if seen["over"] and seen["started"]:
                return
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            status["code"] = 413
            await problem(413, too_big)(scope, receive, send)
        finally:
            self._observe(scope, status["code"], t0)

    def _observe(self, scope: Scope, status: int, t0: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope.get("method", "")
        self.metrics.requests.labels(method, route, str(status)).inc()
        self.metrics.latency.labels(method, route).observe(time.perf_counter() - t0)


class BodyTooLarge(Exception):
    pass


async def _nothing() -> dict[str, Any]:
    return {"type": "http.disconnect"}

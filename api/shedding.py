"""Load shedding: a request waits at most LBDN_MAX_QUEUE_MS for a place, then gets 503 + Retry-After.

An API process serves LBDN_MAX_IN_FLIGHT (8) requests at once, never more than LBDN_API_THREADS:
each needs at most one thread at a time and the DB pool has a connection per thread
(api.main.pool_sizes), so a request given a place never waits for a thread or a connection; it
holds its place until its answer starts. Why fewer places than threads: requests beyond a few at
once add no throughput on a busy machine, only threads competing with the event loop for the GIL,
which is what /healthz and every answer wait for (README "Concurrency": measured). The others wait here, on the event loop, holding neither,
in arrival order; one that waits longer than LBDN_MAX_QUEUE_MS is answered 503 at once (a client
told to come back beats one that waits 10 s for the answer, and the 503 costs far less than a poll).

Not counted, since they have limits of their own and hold no thread while they wait:
- /healthz, /readyz, /metrics: a probe must answer whatever the load (/healthz runs on the loop);
- event streams (per-tenant LBDN_MAX_STREAMS_PER_TENANT, their own 4 threads);
- certify (per-tenant and total certify slots, 429; the computation is in the certify processes).
"""

from __future__ import annotations

import math

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import ServiceMetrics
from api.problems import problem

OWN_LIMITS = ("/certify", "/events")  # path endings of the routes above


def counted(path: str) -> bool:
    """Whether a request for `path` needs a place (see the module's docstring)."""
    if path in ("/healthz", "/readyz", "/metrics"):
        return False
    return not (path.startswith("/v1/") and path.endswith(OWN_LIMITS))


class ShedLoad:
    """Pure ASGI middleware: `places` requests at once, the others wait up to `max_wait_s`."""

    def __init__(self, app: ASGIApp, places: int, max_wait_s: float, metrics: ServiceMetrics) -> None:
        self.app, self.max_wait_s, self.metrics = app, max_wait_s, metrics
        self.places = anyio.Semaphore(places)  # anyio's: fair (FIFO), and safe to cancel while waiting
        self.retry_after = str(max(1, math.ceil(max_wait_s)))
        self.detail = (
            f"the server is overloaded: none of its {places} places (LBDN_MAX_IN_FLIGHT) came free within "
            f"LBDN_MAX_QUEUE_MS ({max_wait_s * 1000:g} ms); retry after {self.retry_after} s"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not counted(scope["path"]):
            return await self.app(scope, receive, send)
        placed = False
        with anyio.move_on_after(self.max_wait_s):
            await self.places.acquire()
            placed = True
        if not placed:
            self.metrics.shed.inc()
            response = problem(503, self.detail, headers={"Retry-After": self.retry_after})
            return await response(scope, receive, send)
        held = [True]

        def give_back() -> None:
            if held[0]:
                held[0] = False
                self.places.release()

        async def send_and_give_back(message: Message) -> None:
            # the place is the request's until its answer starts: a streamed body (a download to a
            # slow client) does not keep others waiting (its chunks' threads are the thread pool's)
            if message["type"] == "http.response.start":
                give_back()
            await send(message)

        try:
            await self.app(scope, receive, send_and_give_back)
        finally:
            give_back()

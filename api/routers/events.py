"""/v1/jobs/{id}/events (Server-Sent Events) and /v1/jobs/{id}/logs.

Events are read from the job store by sequence number, so a client that reconnects with
Last-Event-ID (or ?after=) gets exactly what it missed. The stream ends once the job has finished
and every event up to its final state has been sent.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Header, HTTPException, Query, Request
from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send

from api.deps import CurrentTenant, SessionDep, TenantJob
from api.problems import problem_responses
from api.schemas import MAX_QUERY_INT, LogsOut
from api.services import services_of
from core.store import FINISHED, JobEvent, jobs

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
BATCH = 500


def _poll(request: Request, job_id: str, after: int) -> tuple[str | None, list[JobEvent]]:
    with services_of(request).sessions() as s:
        job = jobs.get_job(s, None, job_id)  # the status first: events after it include its final state
        return (job.status if job else None), jobs.events_after(s, job_id, after, limit=BATCH)


async def _stream(request: Request, job_id: str, after: int) -> AsyncIterator[dict[str, str]]:
    services = services_of(request)
    pause = services.settings.sse_poll_s
    while True:
        # on the stream threads (AppServices.limiters.streams): open streams cannot starve the pollers
        status, events = await anyio.to_thread.run_sync(
            _poll, request, job_id, after, limiter=services.limiters.streams
        )
        for e in events:
            yield {"id": str(e.seq), "event": e.kind, "data": json.dumps(e.data)}
            after = e.seq
        if status is None or (status in FINISHED and len(events) < BATCH):
            return
        if not events:
            await asyncio.sleep(pause)


class StreamCount:
    """Open event streams per tenant in this API process (LBDN_MAX_STREAMS_PER_TENANT): a stream
    holds a thread-pool slot per poll and a connection for its job's whole life, so one tenant's
    thousand streams would slow everyone's polls. Used on the event loop only (no lock needed)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.open = limit, Counter[str]()

    def take(self, tenant: str) -> None:
        """Count one more stream of `tenant`, or raise 429 when it has `limit` open."""
        if self.open[tenant] >= self.limit:
            raise HTTPException(
                429,
                f"LBDN_MAX_STREAMS_PER_TENANT: your tenant has {self.open[tenant]} event streams open and the "
                f"limit is {self.limit}; close one, or poll GET /v1/jobs/{{id}}",
                headers={"Retry-After": "5"},
            )
        self.open[tenant] += 1

    def give_back(self, tenant: str) -> None:
        self.open[tenant] -= 1
        if self.open[tenant] <= 0:
            del self.open[tenant]


class CountedStream(EventSourceResponse):
    """An event stream that gives its tenant's StreamCount slot back however it ends (finished job,
    client gone, server shutdown)."""

    def __init__(self, body: AsyncIterator[dict[str, str]], count: StreamCount, tenant: str, **kw: Any) -> None:
        super().__init__(body, **kw)
        self.count, self.tenant = count, tenant

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.count.give_back(self.tenant)


@router.get(
    "/{job_id}/events",
    summary="Live progress, metrics, state changes and logs (text/event-stream)",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "events: state, progress, metrics, log"},
        **problem_responses(429),
    },
)
async def job_events(
    job: TenantJob,
    request: Request,
    tenant: CurrentTenant,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_QUERY_INT, description="send events after this sequence number")
    ] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", pattern=r"^[0-9]{1,18}$")] = None,
) -> EventSourceResponse:
    start = after if after is not None else int(last_event_id or 0)
    count = services_of(request).stream_count
    count.take(tenant)
    return CountedStream(_stream(request, job.id, start), count, tenant, ping=15, send_timeout=30)


@router.get("/{job_id}/logs", response_model=LogsOut, summary="A job's log lines from `offset` on")
def job_logs(
    job: TenantJob,
    session: SessionDep,
    offset: Annotated[int, Query(ge=0, le=MAX_QUERY_INT, description="first line, 0-based")] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> LogsOut:
    lines = jobs.log_lines(session, job.id, offset, limit)
    return LogsOut(job_id=job.id, offset=offset, next_offset=offset + len(lines), lines=lines)

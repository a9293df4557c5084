"""Dynamic batching of certify requests, in the API process, in front of the certify processes.

One router in the API (not a batcher in each certify process): requests wait here, on the event
loop, in one queue per (model file, tenant); whenever a certify process is free, the oldest queue
is sent to it whole (at most LBDN_CERTIFY_BATCH_MAX_REQUESTS requests), as one call. While the
processes are busy the queues fill, so batches grow with the load by themselves. A free process
waits up to LBDN_CERTIFY_BATCH_WAIT_MS (20) for as many requests as the key's largest recent
batch had (about its clients' concurrency; see `_target`), as Triton's max_queue_delay: closed-loop
clients re-send within a few ms of their answers, and without the wait the first re-sent request
would start a batch of one on the idle process while the rest queue behind it. Measured with 8 KWL
clients on the shared 2 cores: no wait for batch-mates (2 ms) gave batches of 3.5 requests on
average and 34 images/s; waiting (10 ms) batches of 8 and 61 images/s (the 16-image client: 70).
One process gathers a key's batch while the other serves other keys: one batch of 8 costs less
than two of 4 at once, since most of a small forward's cost does not grow with its size
(KWL-small in float64: 46-55 ms for one image, 80 ms for 16). A lone client never waits.
The process decodes each request on its own (a malformed one is refused alone), certifies
the valid inputs of the batch in one float64 forward and serialises each request's answer
(api.certify_pool). Bookkeeping here is a few dict and deque operations per request, so polls and
/healthz keep the event loop; a batcher inside each process would need its own queue and IPC
protocol beside the process pool, and could only batch what one process was handed.

Batches never mix models or tenants: a tenant's requests count against its own slots
(`CertifySlots`), and one tenant's flood never rides in, or delays, another's batch beyond its
turn. A request whose client has gone by the time its batch is formed is dropped (its rows are
not computed); one that goes while its batch computes only loses its answer.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import HTTPException

from api.certify import TenantSlots
from api.uploads import RawInputs

if TYPE_CHECKING:
    from api.certify_pool import CertifyPool, CertifyResult


class ClientGone(Exception):
    """The request's client hung up before its batch was formed: its rows were never computed."""


@dataclass(frozen=True)
class BatchKey:
    """What requests must share to be certified in one batch: the model file and the tenant."""

    path: str
    tenant: str
    model_id: str


@dataclass
class _Waiting:
    raw: RawInputs
    future: asyncio.Future[CertifyResult]
    since: float = field(default_factory=time.monotonic)


class CertifySlots(TenantSlots):
    """Certify requests being read, queued or computed, per tenant and in all, so bodies held in
    memory and queued work stay bounded whatever the clients do."""

    tenant_full = "LBDN_CERTIFY_SLOTS_PER_TENANT ({n}) certify requests of your tenant are in progress"
    all_full = "LBDN_CERTIFY_SLOTS_TOTAL ({n}) certify requests are in progress on this server"
    what, hint = "certify", "retry later, or send several inputs per request"


class CertifyBatcher:
    """`await batcher.certify(key, raw, gone)`: the request's own CertifyResult, computed in a batch
    with the other requests of `key` waiting at the same time; raises its HTTPException."""

    def __init__(self, pool: CertifyPool, *, processes: int, max_requests: int, wait_s: float) -> None:
        self.pool, self.processes, self.max_requests, self.wait_s = pool, processes, max_requests, wait_s
        self._queues: dict[BatchKey, deque[_Waiting]] = {}
        self._busy = 0  # batches being formed or computed (at most one per certify process)
        self._arrived: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches: deque[tuple[BatchKey, int]] = deque(maxlen=10_000)  # recent (key, requests)
        self.dropped = 0  # requests whose client had gone before their batch was formed
        self._loop: asyncio.AbstractEventLoop | None = None
        self.adaptive = True  # wait for _target(key) requests; False: for max_requests (tests)
        self._recent: OrderedDict[BatchKey, deque[int]] = OrderedDict()  # sizes of each key's last batches
        self._gathering: set[BatchKey] = set()

    def wake(self) -> None:
        """Have waiting batches look at their size and the wait again now (thread-safe): after
        `max_requests` or `wait_s` were changed, e.g. by a test."""
        if self._loop is not None and self._arrived is not None:
            self._loop.call_soon_threadsafe(self._arrived.set)

    async def certify(
        self, key: BatchKey, raw: RawInputs, gone: Callable[[], Awaitable[None]] | None = None
    ) -> CertifyResult:
        """`gone()` returns when the request's client has hung up (ClientGone is raised then)."""
        self._loop = asyncio.get_running_loop()
        waiting = _Waiting(raw, self._loop.create_future())
        self._queues.setdefault(key, deque()).append(waiting)
        if self._arrived is None:
            self._arrived = asyncio.Event()
        self._arrived.set()
        self._kick()
        watch = asyncio.ensure_future(gone()) if gone is not None else None
        try:
            if watch is not None:
                await asyncio.wait((waiting.future, watch), return_when=asyncio.FIRST_COMPLETED)
                if not waiting.future.done():
                    raise ClientGone()
            return await waiting.future
        finally:
            if watch is not None:
                watch.cancel()
            if not waiting.future.done():  # gone or cancelled: its batch skips it, or drops its answer
                waiting.future.cancel()

    def _kick(self) -> None:
        while self._busy < self.processes and any(self._queues.values()):
            self._busy += 1
            task = asyncio.get_running_loop().create_task(self._run_one())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _target(self, key: BatchKey) -> int:
        """How many requests a free process waits for (at most wait_s): as many as the key's largest
        batch among its last 16, about its clients' concurrency. A lone client never waits; eight
        in a closed loop wait for each other's next request, and if they were split in two cohorts,
        the first cohort waits for the second's answers to come back, so the cohorts merge."""
        if not self.adaptive:
            return self.max_requests
        recent = self._recent.get(key)
        return min(self.max_requests, max(recent) if recent else 1)

    def _remember(self, key: BatchKey, size: int) -> None:
        self._recent.setdefault(key, deque(maxlen=16)).append(size)
        self._recent.move_to_end(key)
        if len(self._recent) > 4096:  # keys of models and tenants no longer certified
            self._recent.popitem(last=False)

    def _live(self, key: BatchKey) -> int:
        # requests whose clients are still there: a gone one must not count towards a batch's size,
        # or the batch would start short and leave a live request waiting for companions
        return sum(not w.future.done() for w in self._queues.get(key, ()))

    def _oldest(self) -> BatchKey | None:
        live = [(q[0].since, i, k) for i, (k, q) in enumerate(self._queues.items()) if q and k not in self._gathering]
        return min(live)[2] if live else None

    async def _run_one(self) -> None:
        try:
            key = self._oldest()
            if key is None:
                return
            self._gathering.add(key)  # one process gathers a key's batch; the other serves other keys
            try:
                started = time.monotonic()  # wait_s is read each time round: wake() can end the wait early
                while self._live(key) < self._target(key) and ((left := started + self.wait_s - time.monotonic()) > 0):
                    assert self._arrived is not None
                    self._arrived.clear()
                    try:
                        await asyncio.wait_for(self._arrived.wait(), left)
                    except TimeoutError:
                        break
            finally:
                self._gathering.discard(key)
            batch = self._take(key)
            if batch:
                self.batches.append((key, len(batch)))
                self._remember(key, len(batch))
                await self._send(key, batch)
        finally:
            self._busy -= 1
            self._kick()

    def _take(self, key: BatchKey) -> list[_Waiting]:
        queue = self._queues.get(key)
        batch: list[_Waiting] = []
        while queue and len(batch) < self.max_requests:
            waiting = queue.popleft()
            if waiting.future.done():  # its client went away while it waited: its rows are not computed
                self.dropped += 1
                continue
            batch.append(waiting)
        if queue is not None and not queue:
            self._queues.pop(key, None)
        return batch

    async def _send(self, key: BatchKey, batch: list[_Waiting]) -> None:
        from api.certify_pool import CertifyResult

        try:
            outs = await self.pool.certify_many(key.path, [w.raw for w in batch], key.model_id)
        except Exception as e:  # e.g. the processes died twice: each request gets the 503
            for w in batch:
                if not w.future.done():
                    if isinstance(e, HTTPException):
                        w.future.set_exception(HTTPException(e.status_code, e.detail, headers=e.headers))
                    else:
                        w.future.set_exception(RuntimeError(f"certify batch failed: {e!r}"))
            return
        for w, out in zip(batch, outs, strict=True):
            if w.future.done():  # cancelled while its batch ran: the answer is dropped
                continue
            if isinstance(out, CertifyResult):
                w.future.set_result(out)
            else:
                w.future.set_exception(HTTPException(out.status_code, out.detail, headers=out.headers))

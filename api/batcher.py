"""Dynamic batching of certify requests, in the API process, in front of the certify processes.

One router in the API (not a batcher in each certify process): requests wait here, on the event
loop, in one queue per (model file, tenant); whenever a certify process is free, the oldest queue
is sent to it (at most LBDN_CERTIFY_BATCH_MAX_REQUESTS requests) as one call. While the processes
are busy the queues fill, so batches grow with the load by themselves. A free process waits up to
LBDN_CERTIFY_BATCH_WAIT_MS (20) for the key's share of the processes, ceil(C / processes)
requests, C being the most requests of the key in the server (queued or computing) that its last
64 arrivals found, about its clients' concurrency (`_target`), as Triton's max_queue_delay:
closed-loop clients re-send within a few ms of their answers, and without the wait the first
re-sent request would start a batch of one while the rest queue behind it. Eight KWL clients
become two cohorts of four, each computed on its own process while the other cohort's answers and
next requests travel, so both cores work; a batch of all eight at a time left one core idle while
its requests went round (same run, quiet machine: 8 clients 366 against 263 images/s, 32 clients
571 against 355; on a machine loaded by other work, load 9-10, one batch at a time did better,
111 against 74: README "Certify batching, measured"). One batch at a time was chosen when a
1-image certificate cost 46-55 ms against 80 for 16; with the float64 copy checked by version
(lipcore.certify.check_source_by_version) the fixed part of a forward is a few ms. With a process free beside it a batch takes the key's share
and the free process the rest at once; with none, a batch takes all that is queued (one forward
costs less than two). A key being gathered is given to no other process, so a gathering batch is
one task on the event loop (a second task used to find the key taken and start a third at once:
a spin for as long as the wait). A lone client never waits.

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
from collections import Counter, OrderedDict, deque
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
        self.started = 0  # batches started (gathering or computing): a waiting batch is one, not a spin
        self._loop: asyncio.AbstractEventLoop | None = None
        self.adaptive = True  # wait for _target(key) requests; False: for max_requests (tests)
        # per key: its requests in the server (queued or computing) as each of its last arrivals saw them
        self._recent: OrderedDict[BatchKey, deque[int]] = OrderedDict()
        self._computing: Counter[BatchKey] = Counter()  # requests of each key in batches being computed
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
        self._remember(key, self._live(key) + self._computing[key])
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
        # A key is marked as gathering as soon as a process is given it, so a key that is being
        # gathered never starts another task (which would find nothing to do and kick the next one:
        # a spin on the event loop for as long as the gathering waits)
        while self._busy < self.processes and (key := self._oldest()) is not None:
            self._busy += 1
            self.started += 1
            self._gathering.add(key)
            task = asyncio.get_running_loop().create_task(self._run_one(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _target(self, key: BatchKey) -> int:
        """How many requests a free process waits for (at most wait_s): the key's share of the
        processes, ceil(C / processes), C the most requests of the key its last 64 arrivals found
        in the server (about its clients' concurrency). A lone client never waits. Eight clients in
        a closed loop become two cohorts of four, one computing while the other's answers and next
        requests travel, so both cores work; one batch of eight at a time left a core idle while
        the batch's requests went round (measured: see README "Certify batching, measured")."""
        if not self.adaptive:
            return self.max_requests
        recent = self._recent.get(key)
        clients = max(recent) if recent else 1
        return min(self.max_requests, -(-clients // self.processes))

    def _remember(self, key: BatchKey, in_server: int) -> None:
        self._recent.setdefault(key, deque(maxlen=64)).append(in_server)
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

    async def _run_one(self, key: BatchKey) -> None:
        try:
            await self._gather(key)
            # With a process free beside this one, the batch is the key's share (_target) and the
            # free process takes the rest at once; with none, whatever is queued (one batch costs
            # less than two)
            batch = self._take(key, self._target(key) if self._busy < self.processes else self.max_requests)
            self._kick()
            if batch:
                self.batches.append((key, len(batch)))
                self._computing[key] += len(batch)
                try:
                    await self._send(key, batch)
                finally:
                    self._computing[key] -= len(batch)
                    if self._computing[key] <= 0:
                        del self._computing[key]
        finally:
            self._busy -= 1
            self._kick()

    async def _gather(self, key: BatchKey) -> None:
        """Wait (at most wait_s) until `_target(key)` live requests of `key` are queued. The key is
        in `_gathering` meanwhile: one process gathers a key's batch; the other serves other keys."""
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

    def _take(self, key: BatchKey, most: int) -> list[_Waiting]:
        queue = self._queues.get(key)
        batch: list[_Waiting] = []
        while queue and len(batch) < min(most, self.max_requests):
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

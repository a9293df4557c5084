"""Certify compute in processes of its own, at a lower CPU priority than the API's request handling.

Why processes: a certify request is mostly Python (decode, float64 forward, building the answer),
so on threads of the API process it holds the GIL that every poll also needs; 20 certify clients in
a closed loop then starve 200 pollers (measured: poll p99 8 s on 2 cores). In processes of their own
the two share only CPU, and the OS scheduler decides that: the certify processes run `nice`
(LBDN_CERTIFY_NICE, default 10: about a tenth of a core's share against an unniced API), so polls
and `/healthz` are served first and certify takes what is left, all of it when the API is idle.

`LBDN_CERTIFY_CONCURRENCY` processes are started (spawn: no fork of a threaded server) on the first
certify request, so an API that certifies nothing never loads torch. Each keeps its own LRU of
loaded models (`api.model_cache.ModelCache`, keyed by file and modification time) and exits with the
API (parent-death signal). Requests come in batches (api.batcher: concurrent requests of one model
and tenant): each is decoded on its own, so a malformed one is refused alone, the valid inputs are
certified together in one float64 forward per LBDN_CERTIFY_BATCH_MAX_INPUTS rows and split back,
and if that forward refuses the batch (an input overflowing float32) each request is certified
alone so only the offending one gets the 422. A model deleted while requests for it wait answers
404. The process returns each answer already serialised (JSON bytes): building
and serialising the response models is most of a small request's cost, and done in the API it
would take the CPU (and the GIL) that polls and /healthz need (measured: it was half of a certify
request's API CPU; README "Concurrency"). A request waiting for a process holds no thread and no DB connection; if
its client goes away before a process takes it, it is dropped. The `?attack=true` search stays on
threads of the API process (at most LBDN_CERTIFY_ATTACKS_TOTAL at once): it must notice a client's
disconnect while it runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from api.uploads import RawInputs

log = logging.getLogger("lbdn.api")


@dataclass(frozen=True)
class CertifyLimits:
    """What a certify process needs from the settings (picklable; the Settings object is not sent)."""

    max_inputs: int
    max_pixels: int
    cache_size: int
    batch_inputs: int = 256
    json_depth: int = 8


@dataclass(frozen=True)
class _Refused:
    """An HTTPException raised in a certify process, carried back as data (exceptions with keyword
    state do not survive pickling reliably)."""

    status_code: int
    detail: Any
    headers: dict[str, str] | None


@dataclass(frozen=True)
class CertifyResult:
    """One certify request's answer: the api.schemas.CertifyOut as JSON bytes, how many inputs it
    certified, and whether the model had to be loaded for it (not found in that process's LRU)."""

    body: bytes
    inputs: int
    loaded_now: bool


# ---- inside a certify process -----------------------------------------------------------------
_cache: Any = None


def _init(nice: int, cache_size: int) -> None:
    """Initializer of each certify process: lower priority, die with the API, one torch thread."""
    global _cache
    if nice:
        os.nice(nice)
    _die_with_parent()
    from api.model_cache import ModelCache

    _cache = ModelCache(cache_size)
    from lipcore.runtime import set_torch_threads, torch_threads

    set_torch_threads(torch_threads(sharing=os.cpu_count() or 1))  # 1 (LBDN_TORCH_THREADS overrides): see the rule
    # SIGINT goes to the whole process group on Ctrl-C; the API shuts the pool down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the API process dies, even by SIGKILL (PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pool's own EOF on its pipe ends us instead
        pass


def _refused(e: HTTPException) -> _Refused:
    return _Refused(e.status_code, e.detail, dict(e.headers) if e.headers else None)


def _load(path: Path, model_id: str) -> Any:
    """The loaded model of `path` in this process's LRU; 404 when it was deleted meanwhile."""
    from lipcore.certify import check_source_by_version

    try:
        loaded = _cache.get(path)
    except OSError:
        if path.is_file():
            raise
        raise HTTPException(404, f"model {model_id} was deleted while this request waited") from None
    # nothing in this process writes a loaded model: its float64 copy is checked by version counters
    check_source_by_version(loaded.model)
    return loaded


def _certify_many(
    path: str, raws: list[RawInputs], limits: CertifyLimits, model_id: str
) -> list[CertifyResult | _Refused]:
    """Each request's answer, in order, for a batch of requests of one model (see the module doc)."""
    from api.certify import input_shape
    from api.uploads import decode, parse_json

    answers: list[CertifyResult | _Refused | None] = [None] * len(raws)
    try:
        before = _cache.loads
        loaded = _load(Path(path), model_id)
        if loaded.model.gamma is None:
            raise HTTPException(
                422, f"model {model_id} has no Lipschitz bound (Plain layers), so nothing can be certified"
            )
    except HTTPException as e:
        return [_refused(e)] * len(raws)
    loaded_now = _cache.loads > before
    shape = input_shape(loaded.spec)
    group: list[tuple[int, Any, str]] = []  # (request, inputs, scale) certified in one forward
    rows = 0
    for i, raw in enumerate(raws):
        try:
            parsed = parse_json(raw, max_numbers=limits.max_inputs * math.prod(shape), max_depth=limits.json_depth)
            x = decode(
                parsed,
                shape,
                is_image=bool(loaded.spec.img_size),
                max_inputs=limits.max_inputs,
                max_pixels=limits.max_pixels,
            )
        except HTTPException as e:
            answers[i] = _refused(e)
            continue
        group.append((i, x, parsed.scale))
        rows += len(x)
        if rows >= limits.batch_inputs:
            _certify_group(loaded, group, shape, model_id, answers)
            group, rows = [], 0
    _certify_group(loaded, group, shape, model_id, answers)
    done = [a if a is not None else _Refused(500, "certify: no answer computed", None) for a in answers]
    if loaded_now:  # counted once per load, on the batch's first answer
        first = next((k for k, a in enumerate(done) if isinstance(a, CertifyResult)), None)
        if first is not None:
            done[first] = dataclasses.replace(done[first], loaded_now=True)  # type: ignore[arg-type]
    return done


def _certify_group(
    loaded: Any, group: list[tuple[int, Any, str]], shape: tuple[int, ...], model_id: str, answers: list[Any]
) -> None:
    """Certify `group`'s inputs in one forward per scale and write each request's answer."""
    import numpy as np

    from api.certify import certify_batch
    from api.schemas import CertifyOut

    for scale in sorted({s for _, _, s in group}):
        items = [(i, x) for i, x, s in group if s == scale]
        try:
            bound, results, _ = certify_batch(
                loaded, np.concatenate([x for _, x in items]), scale=scale, attack=False, attack_steps=0
            )
        except Exception as e:
            if len(items) > 1:  # one request's input spoilt the forward: each alone, so only it fails
                for i, x in items:
                    _certify_group(loaded, [(i, x, scale)], shape, model_id, answers)
                continue
            if not isinstance(e, HTTPException):
                log.exception("certify failed for model %s", model_id)
                e = HTTPException(500, "certify failed for this input; the error is in the server's log")
            answers[items[0][0]] = _refused(e)
            continue
        start = 0
        for i, x in items:
            own = [r.model_copy(update={"index": k}) for k, r in enumerate(results[start : start + len(x)])]
            start += len(x)
            out = CertifyOut(model_id=model_id, input_shape=list(shape), lipschitz_bound=bound, results=own)
            answers[i] = CertifyResult(body=out.model_dump_json().encode(), inputs=len(own), loaded_now=False)


# ---- in the API process -----------------------------------------------------------------------
class CertifyPool:
    """`await pool.certify(path, raw)`: a certificate computed in a certify process."""

    def __init__(self, processes: int, nice: int, limits: CertifyLimits) -> None:
        self.processes, self.nice, self.limits = processes, nice, limits
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self.model_loads = 0  # models loaded by certify processes (each process loads its own copy)

    def _get(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    max_workers=self.processes,
                    mp_context=get_context("spawn"),
                    initializer=_init,
                    initargs=(self.nice, self.limits.cache_size),
                )
            return self._executor

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is broken:
                self._executor = None
        broken.shutdown(wait=False, cancel_futures=True)

    async def certify_many(self, path: str, raws: list[RawInputs], model_id: str) -> list[CertifyResult | _Refused]:
        """Each request's answer (an api.schemas.CertifyOut as JSON) or refusal, in order, for a batch
        of requests of model `model_id` (file `path`), computed in one certify process. A certify
        process that died (e.g. killed for memory) is replaced and the batch tried once more; a
        second loss raises a 503."""
        for attempt in (1, 2):
            executor = self._get()
            try:
                outs = await asyncio.wrap_future(executor.submit(_certify_many, path, raws, self.limits, model_id))
                break
            except BrokenProcessPool:
                log.warning("a certify process died; starting new ones (attempt %d)", attempt)
                self._replace(executor)
        else:
            raise HTTPException(503, "certify processes died twice in a row; retry later", headers={"Retry-After": "5"})
        self.model_loads += sum(1 for o in outs if isinstance(o, CertifyResult) and o.loaded_now)
        return outs

    async def certify(self, path: Path, raw: RawInputs, model_id: str) -> CertifyResult:
        """One request alone (no batching): its CertifyResult, or its HTTPException raised."""
        (out,) = await self.certify_many(str(path), [raw], model_id)
        if isinstance(out, _Refused):
            raise HTTPException(out.status_code, out.detail, headers=out.headers)
        return out

    def shutdown(self) -> None:
        """Stop the certify processes (API shutdown); queued requests are cancelled."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

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
API (parent-death signal). The process returns the answer already serialised (JSON bytes): building
and serialising the response models is most of a small request's cost, and done in the API it
would take the CPU (and the GIL) that polls and /healthz need (measured: 5.2 -> see README ms of API CPU
per certify request). A request waiting for a process holds no thread and no DB connection; if
its client goes away before a process takes it, it is dropped. The `?attack=true` search stays on
threads of the API process (at most LBDN_CERTIFY_ATTACKS_TOTAL at once): it must notice a client's
disconnect while it runs.
"""

from __future__ import annotations

import asyncio
import logging
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


def _certify_in_process(path: str, raw: RawInputs, limits: CertifyLimits, model_id: str) -> CertifyResult | _Refused:
    from api.certify import certify_batch, input_shape
    from api.schemas import CertifyOut
    from api.uploads import decode

    name = f"model {model_id}"

    try:
        before = _cache.loads
        loaded = _cache.get(Path(path))
        loaded_now = _cache.loads > before
        if loaded.model.gamma is None:
            raise HTTPException(422, f"{name} has no Lipschitz bound (Plain layers), so nothing can be certified")
        shape = input_shape(loaded.spec)
        x = decode(
            raw, shape, is_image=bool(loaded.spec.img_size), max_inputs=limits.max_inputs, max_pixels=limits.max_pixels
        )
        bound, results, _ = certify_batch(loaded, x, scale=raw.scale, attack=False, attack_steps=0)
        out = CertifyOut(model_id=model_id, input_shape=list(shape), lipschitz_bound=bound, results=results)
        return CertifyResult(body=out.model_dump_json().encode(), inputs=len(results), loaded_now=loaded_now)
    except HTTPException as e:
        return _Refused(e.status_code, e.detail, dict(e.headers) if e.headers else None)


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

    async def certify(self, path: Path, raw: RawInputs, model_id: str) -> CertifyResult:
        """Certificates for `raw` against the model file `path` of model `model_id`, as the JSON of an
        api.schemas.CertifyOut; raises HTTPException as the computation would have. A certify process that died (e.g. killed for memory) is replaced and
        the request tried once more; a second loss answers 503."""
        for attempt in (1, 2):
            executor = self._get()
            try:
                out = await asyncio.wrap_future(
                    executor.submit(_certify_in_process, str(path), raw, self.limits, model_id)
                )
                break
            except BrokenProcessPool:
                log.warning("a certify process died; starting new ones (attempt %d)", attempt)
                self._replace(executor)
        else:
            raise HTTPException(503, "certify processes died twice in a row; retry later", headers={"Retry-After": "5"})
        if isinstance(out, _Refused):
            raise HTTPException(out.status_code, out.detail, headers=out.headers)
        if out.loaded_now:
            self.model_loads += 1
        return out

    def shutdown(self) -> None:
        """Stop the certify processes (API shutdown); queued requests are cancelled."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

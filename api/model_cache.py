"""A thread-safe LRU of trained models loaded for certify (safetensors only, via lipcore.checkpoint)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any


class ModelCache:
    """Keyed by (file, modification time): a re-written checkpoint is loaded afresh."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lru: OrderedDict[tuple[str, int], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, int], threading.Lock] = {}
        self.loads = 0  # checkpoints read from disk (a cache miss each)

    def get(self, path: Path) -> Any:
        """The lipcore LoadedModel of `path` (eval mode, CPU, parameters frozen)."""
        key = (str(path), path.stat().st_mtime_ns)
        with self._lock:
            if key in self._lru:
                self._lru.move_to_end(key)
                return self._lru[key]
            loading = self._loading.setdefault(key, threading.Lock())
        # Loaded outside the LRU lock so a slow load never stalls requests for cached models, and
        # under a lock of its own key so that many first requests at once load it once, not N times.
        with loading:
            with self._lock:
                if key in self._lru:
                    return self._lru[key]
            from lipcore.checkpoint import load_model

            _one_torch_thread()
            loaded = load_model(path, device="cpu")
            loaded.model.requires_grad_(False)  # certify and its attack only differentiate w.r.t. inputs
            with self._lock:
                self.loads += 1
                self._lru[key] = loaded
                self._lru.move_to_end(key)
                while len(self._lru) > self.size:
                    self._lru.popitem(last=False)
                self._loading.pop(key, None)
        return loaded

    def forget(self, folder: Path) -> None:
        """Drop every model of the deleted job whose folder is `folder` (LBDN_HOME/jobs/<id>): those
        loaded from under it (local store) and from the S3 download cache's folder of that job id
        (core.artifacts.DownloadCache: `artifact-cache/<id>/...`)."""
        prefix, job_id = str(folder), Path(folder).name
        with self._lock:
            for key in [k for k in self._lru if k[0].startswith(prefix) or job_id in Path(k[0]).parts]:
                del self._lru[key]

    def __len__(self) -> int:
        return len(self._lru)


def _one_torch_thread() -> None:
    """Certify requests run side by side on their own threads (LBDN_CERTIFY_CONCURRENCY), each with
    one torch thread: parallel requests use the cores, while intra-op OpenMP threads spin-waiting
    beside them cost 20x the CPU (measured: a 16-input Toy certify took 94 ms of CPU with torch's
    default 2 threads under load, 4.6 ms with 1). Torch is imported here, on the first certify, so
    an API process that certifies nothing never loads it."""
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)

"""Which device each pool process of a worker owns, and the torch threads it runs with.

`lbdn worker --devices` (LBDN_WORKER_DEVICES) names the worker's devices, one pool process each:
`auto` is every visible GPU or, without one, `--concurrency` CPU processes; `cpu` is `--concurrency`
CPU processes; `all` every visible GPU; a list such as `cuda:0,cuda:2` or `cpu,cpu` those. CPU
processes get slot names cpu:0, cpu:1, ... (one torch device "cpu", distinct slots). A pool process
owns `devices[index]`, where index is billiard's pool-process index, which a replacement process
(after a crash or worker_max_tasks_per_child) takes over from the process it replaces.

A job runs only on its process's device. A job asking for N devices takes N slots: its own and the
next ones, each guarded by an exclusive file lock (taken in slot order, so two such jobs never wait
on each other in a cycle); a job of one device takes its own slot's lock, so it waits while a
multi-device job uses its device.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Plan:
    """The devices of this worker, the threads of each pool process, and the worker's name."""

    devices: list[str]
    threads: int
    name: str = ""
    host: str = field(default_factory=socket.gethostname)
    lock_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lbdn-devices-")))


PLAN: list[Plan] = []  # set in the worker's main process before the pool forks (inherited)
_INDEX: list[int] = [0]  # this process's slot (pool process index; 0 in the main process)


def visible_gpus() -> int:
    """CUDA devices this worker sees, counted in a child process: calling CUDA in the worker's main
    process would break CUDA in the pool processes it forks."""
    code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
        return int(out.stdout.strip() or 0)
    except (subprocess.SubprocessError, ValueError, OSError):
        return 0


def parse_devices(text: str, concurrency: int, gpus: int | None = None) -> list[str]:
    """LBDN_WORKER_DEVICES -> one device name per pool process (see the module's docstring)."""
    words = [w.strip().lower() for w in text.split(",") if w.strip()]
    if words in (["auto"], ["all"]):
        n = visible_gpus() if gpus is None else gpus
        if n:
            return [f"cuda:{i}" for i in range(n)]
        if words == ["all"]:
            raise ValueError("--devices all: this machine has no visible GPU (use auto or cpu)")
        words = ["cpu"]
    if words == ["cpu"]:
        words = ["cpu"] * max(1, concurrency)
    out, cpus = [], 0
    for w in words:
        if w in ("cpu", f"cpu:{cpus}"):
            out.append(f"cpu:{cpus}")
            cpus += 1
        elif w == "cuda" or (w.startswith("cuda:") and w[5:].isdigit()):
            out.append("cuda:0" if w == "cuda" else w)
        else:
            raise ValueError(f"--devices: {w!r} is not auto, cpu, all, cpu or cuda:N")
    if len(set(out)) != len(out):
        raise ValueError(f"--devices: a device is named twice in {text!r}")
    return out


def torch_device(slot: str) -> str:
    """The torch device of a slot name: cpu:1 -> cpu (torch has one CPU device), cuda:2 -> cuda:2."""
    return "cpu" if slot.startswith("cpu") else slot


def claim(index: int) -> None:
    """In a pool process at start: take slot `index` and set the threads, before any torch work
    (torch is imported already: worker.app.plan_devices loaded it before the fork). Then load the
    training code in the background, so the first job does not wait for its imports (Celery allows
    a pool process's start-up a few seconds only)."""
    from lipcore.runtime import set_torch_threads

    _INDEX[0] = index if PLAN and index < len(PLAN[0].devices) else 0
    if PLAN:
        set_torch_threads(PLAN[0].threads)
    threading.Thread(target=_preload, name="lbdn-preload", daemon=True).start()


def _preload() -> None:
    import lipcore.data
    import lipcore.train  # noqa: F401


def mine(count: int = 1, fallback: str = "auto") -> list[str]:
    """The slots a job of `count` devices uses in this process: its own and the next ones.
    Outside `lbdn worker` (a task run by a test, `celery -A worker.app`): the one device `fallback`."""
    devices = PLAN[0].devices if PLAN else [fallback]
    if count > len(devices):
        raise ValueError(f"the job asks for {count} devices and this worker owns {len(devices)} ({','.join(devices)})")
    return [devices[(_INDEX[0] + i) % len(devices)] for i in range(count)]


@contextmanager
def holding(slots: list[str]) -> Iterator[None]:
    """Exclusive use of `slots` among this worker's pool processes (file locks, freed by the kernel
    when a process dies)."""
    if not PLAN:
        yield
        return
    with ExitStack() as stack:
        for slot in sorted(slots, key=PLAN[0].devices.index):
            f = stack.enter_context(open(PLAN[0].lock_dir / f"{slot.replace(':', '-')}.lock", "a+b"))
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def placement(slots: list[str]) -> dict[str, str]:
    """The job columns saying where it runs."""
    host, name = (PLAN[0].host, PLAN[0].name) if PLAN else (socket.gethostname(), "")
    return {"device": ",".join(slots), "host": host, "worker": name or f"pid {os.getpid()}"}

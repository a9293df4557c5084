"""The worker's Celery app: the service's Celery configuration (core.queue) plus the tasks, and the
TaskContext built from the Settings the worker was started with.

`lbdn worker` makes `WorkerApp(settings)` from the settings it read at start. `celery -A worker.app
worker` works too: `worker.app.app` reads the settings from the environment on first use.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from core.queue import configure_celery
from core.settings import Settings, get_settings
from worker.context import TaskContext


class WorkerApp(Celery):  # type: ignore[misc]  # celery ships no type information
    """A Celery app that runs the service's tasks with `self.context` (see worker.tasks)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("lbdn", broker=settings.broker, include=["worker.tasks"])
        configure_celery(self, settings)
        self.context = TaskContext(settings)


def plan_devices(settings: Settings, text: str | None, concurrency: int, sharing: int, name: str) -> list[str]:
    """Fix this worker's devices and threads (worker.devices.PLAN) before Celery forks its pool;
    returns the devices, one pool process each. ValueError for a device list that cannot be."""
    from lipcore.runtime import torch_threads
    from worker import devices

    text = text or settings.worker_devices
    if text.strip().lower() == "auto" and settings.device != "auto":
        # LBDN_DEVICE of earlier releases: cpu or cuda:1 pins every process; cuda is every GPU
        text = "all" if settings.device == "cuda" else settings.device
    names = devices.parse_devices(text, concurrency)
    cpu_processes = sum(d.startswith("cpu") for d in names)
    threads = settings.torch_threads or torch_threads(sharing=max(1, cpu_processes) + sharing)
    devices.PLAN[:] = [devices.Plan(names, threads, name)]
    return names


def context_of(app: Any) -> TaskContext:
    """The TaskContext of the app a task runs in; a clear error for any other app."""
    context = getattr(app, "context", None)
    if not isinstance(context, TaskContext):
        raise RuntimeError("lbdn tasks run only in a worker.app.WorkerApp (lbdn worker)")
    return context


def __getattr__(name: str) -> WorkerApp:
    """`worker.app.app`: the app of `celery -A worker.app worker`, made on first use from the
    environment, so that importing this module reads no settings."""
    if name == "app":
        globals()["app"] = WorkerApp(get_settings())
        return globals()["app"]  # type: ignore[no-any-return]
    raise AttributeError(f"module 'worker.app' has no attribute {name!r}")

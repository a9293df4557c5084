"""The worker's entry in the store's worker registry (core.store.workers), and each pool process's
device and threads (worker.devices), wired to Celery's worker signals. Imported by worker.tasks."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from core.store import transaction, workers
from worker import devices
from worker.app import context_of

log = logging.getLogger("lbdn.worker")
_halt = threading.Event()


@worker_process_init.connect
def _claim_device(**_: Any) -> None:
    """In each pool process as it starts: its device slot and torch threads."""
    from billiard.process import current_process

    devices.claim(int(getattr(current_process(), "index", 0) or 0))


@worker_ready.connect
def _register(sender: Any = None, **_: Any) -> None:
    """In the main process: say which devices this worker owns, again every reap interval."""
    context = context_of(sender.app)
    if not devices.PLAN:  # `celery -A worker.app worker`: the settings' device, one slot
        devices.PLAN.append(devices.Plan([context.settings.device], 1, sender.hostname))
    plan = devices.PLAN[0]
    plan.name = plan.name or sender.hostname
    devices.claim(0)  # a solo or threads pool runs its jobs here (a prefork pool's children claimed theirs)
    sessions, every = context.sessions(), context.settings.reap_interval_s

    def beat() -> None:
        while True:
            try:
                with transaction(sessions) as s:
                    workers.seen(s, plan.name, plan.host, plan.devices)
            except Exception as e:  # the store may be away for a moment; the next beat retries
                log.warning("worker registry not updated: %s", e)
            if _halt.wait(every):
                return

    threading.Thread(target=beat, name="lbdn-worker-registry", daemon=True).start()
    log.info("lbdn worker %s owns %s (%d torch threads each)", plan.name, ",".join(plan.devices), plan.threads)


@worker_shutdown.connect
def _unregister(sender: Any = None, **_: Any) -> None:
    _halt.set()
    if devices.PLAN and sender is not None:
        try:
            with transaction(context_of(sender.app).sessions()) as s:
                workers.gone(s, devices.PLAN[0].name)
        except Exception as e:
            log.warning("worker registry entry not removed: %s", e)

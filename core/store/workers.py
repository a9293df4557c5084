"""The registry of running workers and the devices each owns (lbdn_workers).

A worker's main process registers at start, is seen again every reap interval and removes itself at
shutdown; one killed outright stops counting once unseen for LBDN_WORKER_SEEN_S. The API reads it to
refuse a job that asks for more devices than any worker owns (it imports no training code for that).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.store.tables import Worker, utcnow


def seen(s: Session, name: str, host: str, devices: list[str]) -> None:
    """Insert or refresh the row of worker `name`."""
    row = s.get(Worker, name)
    if row is None:
        s.add(Worker(name=name, host=host, devices=devices, seen_at=utcnow()))
    else:
        row.host, row.devices, row.seen_at = host, devices, utcnow()


def gone(s: Session, name: str) -> None:
    s.execute(delete(Worker).where(Worker.name == name))


def live(s: Session, seen_s: float) -> list[Worker]:
    """Workers seen within the last `seen_s` seconds, most devices first."""
    rows = s.scalars(select(Worker).where(Worker.seen_at >= utcnow() - timedelta(seconds=seen_s)))
    return sorted(rows, key=lambda w: -len(w.devices))


def most_devices(s: Session, seen_s: float) -> dict[str, Any] | None:
    """{"name", "devices"} of the live worker owning the most devices; None when none is live."""
    workers = live(s, seen_s)
    return {"name": workers[0].name, "devices": len(workers[0].devices)} if workers else None

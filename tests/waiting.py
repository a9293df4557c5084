"""The tests' one way to wait for an event: poll until a check holds.

Tests wait on events, never on speed: the bound only stops a run that hangs (a loaded machine can take
a minute to start a Celery worker), so it is generous and no test asserts how soon something happens.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    what: str,
    check: Callable[[], T],
    *,
    bound: float = 300.0,
    every: float = 0.1,
    details: Callable[[], str] | None = None,
) -> T:
    """Call `check()` every `every` seconds until it returns something truthy, and return that.

    After `bound` seconds raise AssertionError naming `what` (and `details()`, e.g. a server's log).
    An exception from `check` (say, an AssertionError because a job failed) ends the wait at once.
    """
    end = time.monotonic() + bound
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"{what}: not seen within {bound:.0f} s" + (f"\n{details()}" if details else ""))
        time.sleep(every)


def follow(
    url: str, job_id: str, headers: dict[str, str] | None = None, timeout: float = 240
) -> list[tuple[str, dict]]:
    """Read the job's SSE stream (GET {url}/v1/jobs/{job_id}/events) until the server ends it, which
    it does once the job has finished: the (event, data) pairs."""
    import httpx

    events, kind = [], None
    with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/events", headers=headers, timeout=httpx.Timeout(timeout)) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind:
                events.append((kind, json.loads(line.split(":", 1)[1])))
    return events

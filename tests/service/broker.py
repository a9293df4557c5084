"""What a test's jobs sent, read back from the real broker: the Celery messages waiting in the
test's own Redis queues (its queue_prefix; no worker consumes them)."""

from __future__ import annotations

import base64
import json

import redis

from core.queue import TASKS
from core.settings import Settings
from core.states import JobKind

_KINDS = {name: kind for kind, name in TASKS.items()}


def waiting(settings: Settings) -> list[tuple[str, JobKind]]:
    """(job id, kind) of every message in the test's queues (settings.broker_url, a Redis), oldest
    first within a queue. kombu LPUSHes and workers pop from the other end, so the list is reversed."""
    client = redis.Redis.from_url(settings.broker_url)
    out = []
    for queue in (settings.gpu_queue, settings.cpu_queue):
        for raw in reversed(client.lrange(queue, 0, -1)):
            message = json.loads(raw)
            args = json.loads(base64.b64decode(message["body"]))[0]
            out.append((args[0], _KINDS[message["headers"]["task"]]))
    return out

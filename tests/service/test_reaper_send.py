"""The reaper's re-send (core.reaper, core.queue.send_jobs): a pass re-queues many expired jobs and
sends their messages over one producer, each once; a broker that cannot be reached leaves every one
marked unsent, for the next pass."""

from __future__ import annotations

import base64
import json

import pytest
import redis

from bench.service import free_port
from core.queue import CeleryQueue
from core.reaper import reap_and_resend
from core.store import jobs, leases, transaction
from tests.service.conftest import make_settings

SPEC = {"model": "Toy", "layer": "Sandwich", "epochs": 3}


def _expired(store, n: int) -> list[str]:
    """n running jobs whose worker's lease ran out."""
    with transaction(store) as s:
        ids = [jobs.create_job(s, tenant="reaped", kind="train", spec=SPEC)[0].id for _ in range(n)]
        for job_id in ids:
            leases.acquire(s, job_id, "gone", lease_s=-1)
    return ids


@pytest.fixture
def db_url(own_pg_url: str) -> str:
    """conftest's `store` on a database of this test alone: a pass re-sends every job it finds,
    other tests' jobs included."""
    return own_pg_url


def test_a_pass_resends_every_expired_job_once_over_one_producer(store, redis_url, tmp_path):
    ids = _expired(store, 60)
    settings = make_settings(tmp_path, broker_url=redis_url)
    queue = CeleryQueue(settings)
    try:
        sent = reap_and_resend(store, queue, settings)
        again = reap_and_resend(store, queue, settings)
        client = redis.Redis.from_url(redis_url)
        bodies = [json.loads(raw) for raw in client.lrange(settings.gpu_queue, 0, -1)]
    finally:
        queue.close()
    assert sorted(sent) == sorted(ids) and again == []
    args = [json.loads(base64.b64decode(b["body"]))[0][0] for b in bodies]
    assert sorted(args) == sorted(ids)  # one message per job, none twice
    with transaction(store) as s:
        assert {jobs.get_job(s, None, j).status for j in ids} == {"queued"}


def test_a_broker_away_leaves_every_job_unsent_for_the_next_pass(store, tmp_path):
    ids = _expired(store, 5)
    settings = make_settings(tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    queue = CeleryQueue(settings)
    try:
        assert reap_and_resend(store, queue, settings) == []
    finally:
        queue.close()
    with transaction(store) as s:
        rows = [jobs.get_job(s, None, j) for j in ids]
    assert {(r.status, r.enqueued_at) for r in rows} == {("queued", None)}

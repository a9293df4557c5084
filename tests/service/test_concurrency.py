"""Concurrency: many pollers and certify calls at once, far beyond the API's threads and DB pool.

No timing assertion: each client makes a fixed number of requests with a generous timeout, and the
test asserts that every one of them answered 2xx and that /healthz answered while they ran. Before
the fix, 50 pollers and 5 certify clients froze the API (a thread-pool / connection-pool deadlock)
and most requests failed with 500 after the pool timeout.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import httpx
import pytest
from sqlalchemy import select

from core.store import init_db, jobs, keys, make_engine, session_factory, transaction
from tests.service.conftest import save_trained_model

TOY = {"model": "Toy", "layer": "Sandwich", "gamma": 1.0, "epochs": 1}
POLLERS, POLLS = 60, 8  # 480 polls
CERTIFIERS, CERTIFIES = 8, 4  # 32 certify calls of 16 inputs


def _store_app(settings):
    """What save_trained_model needs of an app: the store and the settings of the served API."""
    engine = make_engine(settings.db_url)
    init_db(engine)
    services = SimpleNamespace(sessions=session_factory(engine), settings=settings, artifacts=settings.artifact_store())
    return SimpleNamespace(state=SimpleNamespace(services=services)), engine


STREAMS = 10  # event streams of a queued job (no worker here): open, polling, for the whole test


async def _hammer(url: str, secret: str, model: str, queued: str) -> tuple[list[str], list[int]]:
    failures: list[str] = []
    health: list[int] = []
    started = asyncio.Event()
    limits = httpx.Limits(max_connections=POLLERS + CERTIFIERS + STREAMS + 5)
    timeout = httpx.Timeout(300.0)  # generous: this test is about errors, not speed
    headers = {"Authorization": f"Bearer {secret}"}

    async def call(coro) -> None:
        try:
            r = await coro
            if r.status_code >= 300:
                failures.append(f"{r.status_code} {r.text[:200]}")
        except httpx.HTTPError as e:
            failures.append(f"{type(e).__name__}: {e}")
        started.set()

    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=timeout) as c:

        async def poller() -> None:
            for _ in range(POLLS):
                await call(c.get(f"/v1/jobs/{model}"))

        async def certifier() -> None:
            body = {"inputs": [[i / 8 - 1] for i in range(16)], "scale": "model"}
            for _ in range(CERTIFIES):
                await call(c.post(f"/v1/models/{model}/certify", json=body))

        async def prober() -> None:
            await started.wait()  # the load is on: the API has answered at least one of its requests
            async with httpx.AsyncClient(base_url=url, timeout=timeout) as p:
                health.append((await p.get("/healthz")).status_code)

        streaming = asyncio.Event()

        async def stream() -> None:
            async with c.stream("GET", f"/v1/jobs/{queued}/events") as r:
                if r.status_code != 200:
                    failures.append(f"events: {r.status_code}")
                    streaming.set()
                    return
                async for _ in r.aiter_lines():
                    streaming.set()  # the queued job's first event arrived: the stream is open

        streams = [asyncio.create_task(stream()) for _ in range(STREAMS)]
        await streaming.wait()
        load = [asyncio.create_task(poller()) for _ in range(POLLERS)]
        load += [asyncio.create_task(certifier()) for _ in range(CERTIFIERS)]
        probe = asyncio.create_task(prober())
        await asyncio.gather(*load)
        await probe
        for t in streams:
            if t.done():
                failures.append("an event stream ended while its job was queued")
            t.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
    return failures, health


@pytest.mark.parametrize("stack", ["embedded", "redis+postgres"])
def test_pollers_and_certify_beyond_the_pools_get_no_error(service_factory, stack):
    # 4 route threads and 1 certify thread: the pool holds 11 connections, the clients open 78,
    # 10 of them event streams polling the store all along
    broker, db = ("embedded", "sqlite") if stack == "embedded" else ("redis", "postgres")
    # requests beyond the places wait (no shedding within the test's minute: api.shedding is tested
    # in test_replicas.py): what is checked here is that waiting never fails
    svc = service_factory(broker, db, api_threads=4, certify_concurrency=1, max_queue_ms=60_000)
    app, engine = _store_app(svc.settings)
    try:
        with transaction(app.state.services.sessions) as s:
            secret = keys.create_key(s, "acme")[1]
        model = save_trained_model(app, "acme", TOY)
        with transaction(app.state.services.sessions) as s:
            queued = jobs.create_job(s, tenant="acme", kind="train", spec=TOY)[0].id
    finally:
        engine.dispose()
    failures, health = asyncio.run(_hammer(svc.url, secret, model, queued))
    assert failures == [], f"{len(failures)} failed requests, e.g. {failures[:3]}"
    assert health == [200]
    assert "QueuePool limit" not in svc.api.text() and "Traceback" not in svc.api.text()


def test_readyz_names_the_failed_dependency_without_its_error_text(tmp_path, settings_for):
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(settings_for(tmp_path, broker_url="redis://127.0.0.1:1/0"))) as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["checks"] == {"database": "ok", "broker": "unreachable"}
    assert "127.0.0.1" not in r.text and "Error" not in r.text and "refused" not in r.text


def test_one_db_connection_serves_many_threads_without_deadlock(tmp_path, settings_for, monkeypatch):
    """The structural property: a request never keeps a connection while it waits for a thread.

    The real app in this process (httpx's ASGI transport, real threads, a real SQLite store) with
    32 route threads but ONE pooled connection: with sessions held from a request's first query to
    its end (the old design), threads waiting for the connection starve the requests holding it, and
    requests fail after pool_timeout. Here every request must succeed.
    """
    import api.main
    from api.main import create_app

    monkeypatch.setattr(
        api.main, "pool_sizes", lambda settings: {"pool_size": 1, "max_overflow": 0, "pool_timeout": 60}
    )
    app = create_app(settings_for(tmp_path, api_threads=32, certify_concurrency=2, max_queue_ms=60_000))  # no shedding

    async def run() -> tuple[list[str], list[int]]:
        async with app.router.lifespan_context(app):
            with transaction(app.state.services.sessions) as s:
                secret = keys.create_key(s, "acme")[1]
            model = save_trained_model(app, "acme", TOY)
            transport = httpx.ASGITransport(app=app)
            failures: list[str] = []
            health: list[int] = []
            async with httpx.AsyncClient(
                transport=transport, base_url="http://api", headers={"Authorization": f"Bearer {secret}"}, timeout=300
            ) as c:

                async def poll() -> None:
                    for _ in range(5):
                        r = await c.get(f"/v1/jobs/{model}")
                        if r.status_code != 200:
                            failures.append(f"{r.status_code} {r.text[:200]}")

                async def certify() -> None:
                    r = await c.post(f"/v1/models/{model}/certify", json={"inputs": [[0.5]], "scale": "model"})
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")

                async def probe() -> None:
                    health.append((await c.get("/healthz")).status_code)

                await asyncio.gather(*[poll() for _ in range(80)], *[certify() for _ in range(6)], probe())
            return failures, health

    failures, health = asyncio.run(run())
    assert failures == [], f"{len(failures)} failed requests, e.g. {failures[:3]}"
    assert health == [200]


def test_releasing_session_gives_the_connection_back_after_reads_but_not_mid_write(db_url):
    """ReleasingSession: a read ends its transaction (the pool gets its connection back), a write
    keeps it until commit or rollback, so writes stay atomic; on SQLite and PostgreSQL."""
    import secrets

    from sqlalchemy import update

    from core.store import Job, releasing_session_factory

    tenant = f"releasing-{secrets.token_hex(4)}"  # the PostgreSQL database is shared by the session's tests
    engine = make_engine(db_url, pool_size=1, max_overflow=0)
    init_db(engine)
    factory = releasing_session_factory(engine)
    try:
        s = factory()
        assert jobs.get_job(s, tenant, "job_none") is None
        assert not s.in_transaction() and engine.pool.checkedout() == 0
        job, created = jobs.create_job(s, tenant=tenant, kind="train", spec=TOY)
        assert created and s.in_transaction() and engine.pool.checkedout() == 1  # a write holds it
        s.commit()
        assert engine.pool.checkedout() == 0
        s.execute(update(Job).where(Job.id == job.id).values(error="half done"))
        assert s.scalar(select(Job.error).where(Job.id == job.id)) == "half done"  # a read amid a write
        assert s.in_transaction() and engine.pool.checkedout() == 1  # ...keeps the transaction
        s.rollback()
        assert engine.pool.checkedout() == 0
        assert s.scalar(select(Job.error).where(Job.id == job.id)) is None  # rolled back as a whole
        assert engine.pool.checkedout() == 0
        s.close()
    finally:
        engine.dispose()

"""Every way in has a limit (issue 22): the one submission path (core.submit, core.sweep_submit)
tested without HTTP, and through the API: sweeps counted and refused whole, no GET that creates
jobs, reserved idempotency keys, event streams per tenant, failed authentications per address, a
header read timeout, URLs never built from Host, one outcome for cancel, finite spec numbers."""

from __future__ import annotations

import json
import secrets
import socket
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from core.queue import CeleryQueue
from core.settings import Settings
from core.states import JobKind
from core.store import jobs, keys, leases, transaction
from lipcore.spec import ExperimentSpec
from tests.service.broker import waiting
from tests.service.conftest import Service
from tests.waiting import wait_until

TOY = {"model": "Toy", "layer": "Sandwich", "epochs": 2}
KWL = {"model": "KWL", "layer": "Sandwich", "scale": "small", "dataset": "cifar10", "epochs": 1}
HUGE = {"model": "Resnet", "scale": "xlarge", "dataset": "tiny_imagenet"}


def _app(settings: Settings) -> TestClient:
    from api.main import create_app

    return TestClient(create_app(settings))


def _finish(sessions, job_id: str, status: str = "succeeded") -> None:
    """What a worker does to a job, without one: take its lease and end it."""
    with transaction(sessions) as s:
        leases.acquire(s, job_id, "test", 60)
        leases.finish(s, job_id, "test", status, result={"test_acc": 10.0})


# ---- the submission path without HTTP --------------------------------------------------------------
def test_submission_rules_without_http(store, tmp_path: Path, settings_for) -> None:
    from core.submit import Refused, resolve_image_folder, submit
    from core.sweep_submit import SweepAsk, count_jobs, plan_sweep

    settings = settings_for(tmp_path, max_active_jobs_per_tenant=3)
    t1, t2 = f"lim-{secrets.token_hex(4)}", f"lim-{secrets.token_hex(4)}"  # PostgreSQL's rows are shared
    # a grid is counted from its sizes: four lists of 100 values are 10^8 points, never expanded
    grid = {k: list(range(100)) for k in ("gamma", "seed", "scale", "layer")}
    assert count_jobs(SweepAsk(spec=TOY, grid=grid)) == 100**4
    with store() as s:
        with pytest.raises(Refused, match="LBDN_MAX_JOBS_PER_SWEEP") as e:
            plan_sweep(s, t1, settings, SweepAsk(spec=TOY, grid=grid))
        assert e.value.status == 422
        # 2 x 4 points with room for 3 jobs: refused whole, nothing made
        with pytest.raises(Refused, match="8 jobs more") as e:
            plan_sweep(s, t1, settings, SweepAsk(spec=TOY, grid={"gamma": [1, 2], "seed": [0, 1, 2, 3]}))
        assert e.value.status == 429 and e.value.headers == {"Retry-After": "60"}
        assert jobs.list_jobs(s, t1) == []
        # the cost ceiling holds for every point, `overrides` included
        with pytest.raises(Refused, match="spec at seed=1: training needs about .* LBDN_MAX_JOB_MEMORY_GB"):
            plan_sweep(s, t1, settings, SweepAsk(spec=HUGE, grid={"seed": [1]}, overrides={"train_batch_size": 65536}))
        # one job at a time: the quota and the reserved idempotency keys
        spec = ExperimentSpec.model_validate(TOY).model_dump(mode="json")
        for _ in range(3):
            submit(s, tenant=t1, settings=settings, kind=JobKind.train, spec=spec)
        with pytest.raises(Refused, match="LBDN_MAX_ACTIVE_JOBS_PER_TENANT"):
            submit(s, tenant=t1, settings=settings, kind=JobKind.train, spec=spec)
        with pytest.raises(Refused, match="the service's own") as e:
            submit(s, tenant=t2, settings=settings, kind=JobKind.train, spec=spec, idempotency_key="sweep-eval:a:b")
        assert e.value.status == 422
    # the data-path rule: a folder outside the data dir is refused before anything reads it
    outside = ExperimentSpec(model="KWL", layer="Sandwich", dataset="image_folder", data_path=str(tmp_path))
    with pytest.raises(Refused, match="spec.data_path"):
        resolve_image_folder(outside, settings)


# ---- sweeps through the API ------------------------------------------------------------------------
def test_sweep_is_refused_whole_by_the_active_jobs_quota(tmp_path: Path, settings_for) -> None:
    with _app(settings_for(tmp_path, max_active_jobs_per_tenant=3)) as c:
        r = c.post("/v1/sweeps", json={"spec": TOY, "grid": {"gamma": [1, 2], "seed": [0, 1, 2, 3]}})
        assert r.status_code == 429, r.text
        assert "LBDN_MAX_ACTIVE_JOBS_PER_TENANT" in r.json()["detail"] and int(r.headers["Retry-After"]) > 0
        assert c.get("/v1/jobs").json()["items"] == [] and c.get("/v1/sweeps").json()["items"] == []


def test_sweep_grid_is_counted_before_it_is_expanded(client) -> None:
    r = client.post("/v1/sweeps", json={"spec": TOY, "grid": {k: list(range(100)) for k in ("gamma", "seed", "scale")}})
    assert r.status_code == 422 and "1000000 jobs" in r.json()["detail"]
    assert "LBDN_MAX_JOBS_PER_SWEEP" in r.json()["detail"]


def test_sweep_points_pass_the_cost_ceiling_overrides_included(client) -> None:
    for body in (
        {"spec": {**HUGE, "train_batch_size": 65536}, "grid": {"seed": [0, 1]}},
        {"spec": HUGE, "grid": {"seed": [0, 1]}, "overrides": {"train_batch_size": 65536}},
    ):
        r = client.post("/v1/sweeps", json=body)
        assert r.status_code == 422 and "LBDN_MAX_JOB_MEMORY_GB" in r.json()["detail"], r.text
    assert client.get("/v1/jobs").json()["items"] == []


def test_reading_a_sweep_creates_no_job(client, redis_url) -> None:
    """Evaluation jobs come from advance_sweeps (the worker that finished the training job, or the
    reaper), once each, and a tenant cannot take their idempotency keys (that made GET answer 500)."""
    from core.sweep_submit import advance_sweeps

    sw = client.post("/v1/sweeps", json={"spec": KWL, "grid": {"seed": [1]}, "evaluate": {"n_examples": 2}}).json()
    trained = sw["jobs"][0]["job_id"]
    forged = client.post(
        "/v1/jobs", json={"kind": "train", "spec": TOY}, headers={"Idempotency-Key": f"sweep-eval:{sw['id']}:{trained}"}
    )
    assert forged.status_code == 422 and "the service's own" in forged.json()["detail"]
    app = client.app
    _finish(app.state.services.sessions, trained)
    for _ in range(2):
        got = client.get(f"/v1/sweeps/{sw['id']}")
        assert got.status_code == 200 and [j["role"] for j in got.json()["jobs"]] == ["train"]
    settings = app.state.services.settings.model_copy(update={"broker_url": redis_url})  # to read it back
    queue = CeleryQueue(settings)
    try:
        made = advance_sweeps(app.state.services.sessions, queue, settings)
        assert len(made) == 1 and waiting(settings) == [(made[0], JobKind.evaluate)]
        assert advance_sweeps(app.state.services.sessions, queue, settings) == []  # idempotent
        assert waiting(settings) == [(made[0], JobKind.evaluate)]
    finally:
        queue.close()
    roles = [(j["role"], j["job_id"]) for j in client.get(f"/v1/sweeps/{sw['id']}").json()["jobs"]]
    assert roles == [("train", trained), ("evaluate", made[0])]


# ---- cancel, URLs, numbers -------------------------------------------------------------------------
def test_an_accepted_cancel_always_ends_cancelled(client) -> None:
    job = client.post("/v1/jobs", json={"kind": "train", "spec": TOY}).json()
    sessions = client.app.state.services.sessions
    with transaction(sessions) as s:
        leases.acquire(s, job["id"], "w", 60)
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "running" and r.json()["cancel_requested"] is True
    # the worker finishes its last step before it sees the flag
    with transaction(sessions) as s:
        assert leases.finish(s, job["id"], "w", "succeeded", result={"test_acc": 1.0})
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
    # a job that finished before the cancel: 409, and it stays as it ended
    done = client.post("/v1/jobs", json={"kind": "train", "spec": TOY}).json()
    _finish(sessions, done["id"])
    r = client.post(f"/v1/jobs/{done['id']}/cancel")
    assert r.status_code == 409 and "already succeeded" in r.json()["detail"]
    assert client.get(f"/v1/jobs/{done['id']}").json()["status"] == "succeeded"


def test_urls_never_come_from_the_host_header(tmp_path: Path, settings_for) -> None:
    for public in (None, "https://lbdn.example.org/base"):
        with _app(settings_for(tmp_path / str(bool(public)), public_url=public)) as c:
            job = c.post("/v1/jobs", json={"kind": "train", "spec": TOY}).json()
            folder = c.app.state.services.settings.job_dir(job["id"])
            folder.mkdir(parents=True)
            (folder / "spec.json").write_text("{}")
            items = c.get(f"/v1/jobs/{job['id']}/artifacts", headers={"Host": "evil.example"}).json()["items"]
            assert [i["url"] for i in items] == [f"{public or ''}/v1/jobs/{job['id']}/artifacts/spec.json"]


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_spec_numbers_must_be_finite(db: str, value: str, tmp_path: Path, settings_for, request) -> None:
    urls = {"database_url": request.getfixturevalue("own_pg_url")} if db == "postgres" else {}
    with _app(settings_for(tmp_path, **urls)) as c:
        body = '{"kind": "train", "spec": {"model": "KWL", "dataset": "cifar10", "offset": ' + value + "}}"
        r = c.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "offset" in r.json()["detail"], r.text
        assert c.get("/v1/jobs").json()["items"] == []


# ---- a real server: streams, failed keys, half-sent headers -----------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.service.conftest import make_settings

    tmp = tmp_path_factory.mktemp("limits")
    settings = make_settings(
        tmp, max_streams_per_tenant=2, auth_failures_per_window=3, header_timeout_s=1.0, key_cache_s=600.0
    )
    (tmp / "logs").mkdir()
    svc = Service(settings, tmp / "logs")
    yield svc
    svc.close()


def test_event_streams_are_limited_per_tenant(server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        job = c.post("/v1/jobs", json={"kind": "train", "spec": TOY}).json()  # stays queued: no worker
        path = f"/v1/jobs/{job['id']}/events"
        with c.stream("GET", path) as one, c.stream("GET", path) as two:
            assert one.status_code == two.status_code == 200
            with c.stream("GET", path) as third:
                assert third.status_code == 429 and int(third.headers["Retry-After"]) > 0
                assert "LBDN_MAX_STREAMS_PER_TENANT" in json.loads(third.read())["detail"]

        # closed streams give their places back (once the server has seen the disconnects)
        def admitted() -> bool:
            with c.stream("GET", path) as again:
                return again.status_code == 200

        wait_until("a stream admitted after the others closed", admitted, every=0.05)


def test_failed_authentications_are_limited_per_address(server) -> None:
    from core.store import make_engine, session_factory

    engine = make_engine(server.settings.db_url)
    with transaction(session_factory(engine)) as s:
        good = keys.create_key(s, "acme")[1]
    engine.dispose()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get("/v1/jobs", headers={"Authorization": f"Bearer {good}"}).status_code == 200  # now known
        for _ in range(3):
            assert c.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
        r = c.get("/v1/jobs", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 429 and "LBDN_AUTH_FAILURES_PER_WINDOW" in r.json()["detail"]
        assert int(r.headers["Retry-After"]) > 0
        assert c.get("/v1/jobs", headers={"Authorization": f"Bearer {good}"}).status_code == 200


def test_half_sent_headers_are_cut_off(server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert sock.recv(1024) == b""  # closed by the server (after LBDN_HEADER_TIMEOUT_S), not answered
    assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200  # a whole request still works

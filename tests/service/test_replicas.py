"""Several API processes on one store and broker (issue 19): two `lbdn api` processes on two ports
(a job, its events, certify and a key revocation seen alike through both), `lbdn api --processes 2`
(one port; a dead replica restarted, SIGTERM stops all, replicas die with their supervisor), the
start-up re-send shared by replicas, and load shedding under a flood."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from core.queue import CeleryQueue
from core.reaper import reap_and_resend
from core.store import Job, jobs, transaction, utcnow
from tests.service.broker import waiting
from tests.service.conftest import Proc, make_settings, settings_env
from tests.waiting import follow, wait_until

ROOT = Path(__file__).resolve().parents[2]
TOY = {"model": "Toy", "layer": "Sandwich", "gamma": 2.0, "epochs": 3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lbdn(env: dict[str, str], *args: str) -> str:
    """A server command (`lbdn keys ...`) in a process of its own; its stdout."""
    out = subprocess.run(
        [sys.executable, "-m", "api.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie nobody reaped has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.fixture
def procs(request: pytest.FixtureRequest, tmp_path: Path):
    """start(args, env, name) -> Proc, each stopped (and its log printed on failure) at the end."""
    started: list[Proc] = []
    (tmp_path / "logs").mkdir()

    def start(args: list[str], env: dict[str, str], name: str, stop_signal: str = "SIGTERM") -> Proc:
        proc = Proc(args, env, tmp_path / "logs" / f"{name}.log", stop_signal)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for proc in started:
            print(f"==== {proc.log.name}\n{proc.text()[-4000:]}")


def test_two_api_processes_serve_one_store_and_broker_alike(procs, tmp_path, redis_url, own_pg_url):
    """Two `lbdn api` on two ports, started at once on an empty PostgreSQL database (their
    migrations take turns), one worker, Redis: what is done through one is seen through the other."""
    settings = make_settings(
        tmp_path, broker_url=redis_url, database_url=own_pg_url, auth="keys", key_cache_s=0.5, lipschitz_restarts=0
    )
    env = settings_env(settings)
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    apis = [
        procs(["api", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]], env, f"api-{i}")
        for i, url in enumerate(urls)
    ]
    for api in apis:
        api.wait_for("Uvicorn running on")
    procs(["worker", "--concurrency", "1"], env, "worker", stop_signal="SIGKILL").wait_for(" ready.")
    created = lbdn(env, "keys", "create", "--tenant", "team").strip().splitlines()
    key_id, secret = created[0].split()[1], created[-1]
    headers = {"Authorization": f"Bearer {secret}"}
    a, b = (httpx.Client(base_url=url, headers=headers, timeout=60) for url in urls)

    job = a.post("/v1/jobs", json={"kind": "train", "spec": TOY})
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    assert b.get(f"/v1/jobs/{job_id}").json()["id"] == job_id
    assert job_id in {j["id"] for j in b.get("/v1/jobs").json()["items"]}

    events = follow(urls[1], job_id, headers)  # caused by the worker, streamed by the other API
    states = [d["status"] for k, d in events if k == "state"]
    assert states[-1] == "succeeded" and states.count("succeeded") == 1
    assert [d["epoch"] for k, d in events if k == "metrics"] == [1, 2, 3]
    assert a.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"

    body = {"inputs": [[-0.5], [0.7]], "scale": "model"}
    answers = [c.post(f"/v1/models/{job_id}/certify", json=body) for c in (a, b)]
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    assert answers[0].json()["results"] == answers[1].json()["results"]

    lbdn(env, "keys", "revoke", key_id)  # another process: each API sees it when its key cache expires
    for client in (a, b):
        wait_until("the revoked key refused", lambda c=client: c.get(f"/v1/jobs/{job_id}").status_code == 401)
    assert [c.get(f"/v1/jobs/{job_id}").status_code for c in (a, b)] == [401, 401]


def _replicas(proc: Proc, env: dict[str, str], port: int, processes: int = 2) -> dict[int, int]:
    """Wait until `processes` replicas of `lbdn api --processes` listen; {index: pid} from its log."""
    wait_until(
        f"{processes} replicas listening",
        lambda: proc.text().count("Uvicorn running on") >= processes,
        details=lambda: proc.text()[-3000:],
    )
    pids = {}
    for line in proc.text().splitlines():
        if line.startswith("lbdn: API replica") and " pid " in line:
            index, pid = line.removeprefix("lbdn: API replica ").split(" pid ")
            pids[int(index)] = int(pid)
    return pids


def _polls_counted(url: str) -> int:
    """GET /v1/jobs/{id} answers counted in one scrape of /metrics (a fresh connection: any replica)."""
    route = 'lbdn_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"} '
    lines = [line for line in httpx.get(f"{url}/metrics", timeout=60).text.splitlines() if line.startswith(route)]
    return int(float(lines[0].removeprefix(route))) if lines else 0


def _replica_settings_env(tmp_path: Path, **overrides) -> dict[str, str]:
    return settings_env(make_settings(tmp_path, auth="none", **overrides))


def test_a_dead_replica_is_restarted_and_replicas_die_with_their_supervisor(procs, tmp_path):
    env, port = _replica_settings_env(tmp_path), free_port()
    sup = procs(["api", "--host", "127.0.0.1", "--port", str(port), "--processes", "2"], env, "replicas")
    pids = _replicas(sup, env, port)
    url = f"http://127.0.0.1:{port}"
    job_id = httpx.post(f"{url}/v1/jobs", json={"kind": "train", "spec": TOY}, timeout=60).json()["id"]
    # fresh connections: the kernel spreads them over both replicas, which share the store
    assert {httpx.get(f"{url}/v1/jobs/{job_id}", timeout=60).status_code for _ in range(8)} == {200}
    # /metrics sums every replica's counters, whichever replica a scrape reaches
    assert {_polls_counted(url) for _ in range(6)} == {8}

    os.kill(pids[0], signal.SIGKILL)
    sup.wait_for("API replica 0 exited")
    restarted = _replicas(sup, env, port, processes=3)  # the third "Uvicorn running on": the new replica 0
    assert restarted[0] != pids[0] and restarted[1] == pids[1]
    assert {httpx.get(f"{url}/v1/jobs/{job_id}", timeout=60).status_code for _ in range(8)} == {200}
    assert {_polls_counted(url) for _ in range(6)} == {16}  # the killed replica's counts stay in the sum

    sup.kill9()  # the supervisor itself, by SIGKILL: its replicas follow it (PR_SET_PDEATHSIG)
    wait_until("replicas gone", lambda: not any(alive(pid) for pid in restarted.values()))


def test_sigterm_stops_every_replica(procs, tmp_path):
    env, port = _replica_settings_env(tmp_path), free_port()
    sup = procs(["api", "--host", "127.0.0.1", "--port", str(port), "--processes", "2"], env, "replicas")
    pids = _replicas(sup, env, port)
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=60).status_code == 200
    second = subprocess.run(  # SO_REUSEPORT would let it join the port: refused like a second plain API
        [sys.executable, "-m", "api.cli", "api", "--port", str(port), "--processes", "2"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 1 and "cannot listen" in second.stderr, second.stderr
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.proc.wait(timeout=120) == 0  # (bound: a graceful shutdown is seconds)
    assert not any(alive(pid) for pid in pids.values())
    assert "did not stop" not in sup.text() and sup.text().count("Application shutdown complete") == 2


def test_replicas_starting_together_resend_a_lost_job_once(store, redis_url, tmp_path):
    """Each replica's start-up pass re-sends the queued jobs not sent since their supervisor
    started (api.main): the first pass sends, the others (and a replica restarted later) find
    nothing; an API started after that sends it again, as a single API always did. Messages are
    counted in the real broker (this test's own queue names; no worker consumes them)."""
    settings = make_settings(tmp_path, broker_url=redis_url)
    with transaction(store) as s:
        job, _ = jobs.create_job(s, tenant="t", kind="train", spec=TOY)
        s.execute(update(Job).where(Job.id == job.id).values(enqueued_at=utcnow() - timedelta(hours=1)))
    up_since, queue = time.time(), CeleryQueue(settings)
    try:
        for _ in range(3):
            reap_and_resend(store, queue, settings, sent_before=up_since)
        after_replicas = [j for j, _ in waiting(settings)].count(job.id)
        reap_and_resend(store, queue, settings, sent_before=time.time())
        after_a_later_api = [j for j, _ in waiting(settings)].count(job.id)
    finally:
        queue.close()
    assert (after_replicas, after_a_later_api) == (1, 2)


def test_overload_is_shed_early_and_healthz_still_answers(procs, tmp_path):
    """4 places and LBDN_MAX_QUEUE_MS=1: a flood of lists gets some 503s with Retry-After at once,
    the rest 200; /healthz answers 200 meanwhile; afterwards the API serves as before."""
    env, port = _replica_settings_env(tmp_path, api_threads=4, max_queue_ms=1), free_port()
    api = procs(["api", "--host", "127.0.0.1", "--port", str(port)], env, "api")
    api.wait_for("Uvicorn running on")
    url = f"http://127.0.0.1:{port}"

    async def flood() -> tuple[list[httpx.Response], int]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
            answers = asyncio.gather(*(c.get("/v1/jobs") for _ in range(200)))
            health = (await c.get("/healthz")).status_code
            return list(await answers), health

    def shed_seen() -> list[httpx.Response]:
        answers, health = asyncio.run(flood())
        assert health == 200
        assert {r.status_code for r in answers} <= {200, 503}, {r.status_code for r in answers}
        return [r for r in answers if r.status_code == 503]

    shed = wait_until("a 503 in a flood", shed_seen, every=0)
    assert shed[0].headers["Retry-After"] == "1"
    assert shed[0].headers["content-type"] == "application/problem+json"
    assert "LBDN_MAX_QUEUE_MS (1 ms)" in shed[0].json()["detail"]
    assert httpx.get(f"{url}/v1/jobs", timeout=60).status_code == 200  # every place was given back
    metrics = httpx.get(f"{url}/metrics", timeout=60).text.splitlines()
    assert any(line.startswith("lbdn_http_shed_total ") and float(line.split()[1]) >= 1 for line in metrics)


def test_serve_with_two_api_processes_stops_them_and_its_worker_on_sigterm(procs, tmp_path):
    env, port = _replica_settings_env(tmp_path), free_port()
    serve = procs(["serve", "--host", "127.0.0.1", "--port", str(port), "--api-processes", "2"], env, "serve")
    pids = _replicas(serve, env, port)
    serve.wait_for(" ready.")  # the worker
    worker = int(serve.text().split("lbdn: worker pid ", 1)[1].split()[0])
    assert httpx.get(f"http://127.0.0.1:{port}/v1/jobs", timeout=60).status_code == 200
    serve.proc.send_signal(signal.SIGTERM)
    assert serve.proc.wait(timeout=180) == 0  # (bound: the idle worker's warm shutdown is seconds)
    assert not any(alive(pid) for pid in [*pids.values(), worker])
    assert "lbdn: stopped" in serve.text()


def test_replicas_share_the_certify_processes_of_one_api_unless_told(monkeypatch, tmp_path):
    from api.replicas import replica_env
    from core.settings import Settings

    monkeypatch.delenv("LBDN_CERTIFY_CONCURRENCY", raising=False)
    unset = Settings(_env_file=None, home=tmp_path)
    assert replica_env(unset, 2)["LBDN_CERTIFY_CONCURRENCY"] == "1"  # 2 in all, as one API has
    assert replica_env(unset, 2)["LBDN_API_PROCESSES"] == "2"
    monkeypatch.setenv("LBDN_CERTIFY_CONCURRENCY", "3")
    told = Settings(_env_file=None, home=tmp_path)
    assert replica_env(told, 2)["LBDN_CERTIFY_CONCURRENCY"] == "3"  # per replica, as set

"""Fixtures of the service tests: real SQLite and PostgreSQL stores, the API app, worker processes.

PostgreSQL and Redis are the machine's own (127.0.0.1:5432 and :6379). Each test session makes its
own database `lbdn_test_<random>` and Redis queue names, and drops them at the end, so runs never
interfere with each other or with whatever else uses the `test` database. If a server is down the
tests skip with a message saying what to start; under CI (CI=true) they fail instead, so a CI
machine missing a server can never pass by skipping.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from core.settings import Settings
from core.store import init_db, make_engine, session_factory
from tests.service.apps import QUICK, module_apps, shared_client  # noqa: F401 (fixtures of the service tests)
from tests.waiting import wait_until

PG_ADMIN = os.environ.get("LBDN_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LBDN_TEST_REDIS", "redis://127.0.0.1:6379/0")
RUN_ID = secrets.token_hex(4)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "artifacts: touches jobs' files; runs on both artifact backends (local folder, loopback S3)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # only tests marked `artifacts` run twice: everything else keeps the local store (and its time)
    if metafunc.definition.get_closest_marker("artifacts") and "artifact_backend" in metafunc.fixturenames:
        metafunc.parametrize("artifact_backend", ["local", "s3"], indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/service talks to real servers or processes: `make test-fast` leaves it out.
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.service)


def _missing(what: str) -> None:
    """A prerequisite server is down: fail under CI, skip (saying how to start it) elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(what)
    pytest.skip(what)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    yield from _pg_database(f"lbdn_test_{RUN_ID}")


@pytest.fixture
def own_pg_url() -> Iterator[str]:
    """A PostgreSQL database of one test (worker reapers must not see other tests' jobs)."""
    yield from _pg_database(f"lbdn_test_{RUN_ID}_{secrets.token_hex(3)}")


def _pg_database(name: str) -> Iterator[str]:
    import psycopg

    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        _missing(
            f"PostgreSQL at {PG_ADMIN} is needed by the service tests and is not reachable ({e}); start it "
            "(e.g. `pg_ctlcluster 15 main start`) or point LBDN_TEST_PG_ADMIN at one"
        )
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The machine's Redis; this session's queues (and kombu's bindings of them) are removed after."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as e:
        _missing(
            f"Redis at {REDIS_URL} is needed by the service tests and is not reachable ({e}); start it "
            "(e.g. `redis-server --daemonize yes`) or point LBDN_TEST_REDIS at one"
        )
    yield REDIS_URL
    for key in client.scan_iter(match=f"*t{RUN_ID}*"):
        client.delete(key)
    # messages of killed workers wait in kombu's unacked hash; drop ours so nothing is restored later
    for tag, raw in client.hgetall("unacked").items():
        if f"t{RUN_ID}".encode() in raw:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs on a new SQLite file and on the session's PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lbdn.sqlite'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(db_url: str):
    """A session factory on a store with the tables made (PostgreSQL rows are shared per session)."""
    engine = make_engine(db_url)
    init_db(engine)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on a free loopback port for the session (a real S3-protocol HTTP server),
    with the bucket `lbdn` made; each test keeps its files under a prefix of its own."""
    import httpx
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    httpx.put(f"{url}/lbdn").raise_for_status()  # CreateBucket (moto does not check signatures)
    yield url
    server.stop()


@pytest.fixture
def artifact_backend(request: pytest.FixtureRequest) -> str:
    """'local' (LBDN_HOME/jobs), or 's3' in tests marked `artifacts` (their second run)."""
    return str(getattr(request, "param", "local"))


@pytest.fixture
def backend_overrides(artifact_backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The settings that put this test's jobs' files on its artifact backend (none for local)."""
    if artifact_backend == "local":
        return {}
    return {
        "artifacts": _new_prefix(),
        "s3_endpoint": request.getfixturevalue("s3_server"),
        "s3_region": "us-east-1",
        "s3_access_key_id": "testing",
        "s3_secret_access_key": "testing",
    }


def _new_prefix() -> str:
    return f"s3://lbdn/t{RUN_ID}-{secrets.token_hex(4)}"


@pytest.fixture
def settings_for(backend_overrides: dict[str, str]):
    """settings_for(tmp_path, **overrides) -> Settings of one test (see make_settings), on the
    test's artifact backend; each call's S3 prefix is its own, as each tmp_path's LBDN_HOME is."""

    def make(tmp_path: Path, **overrides) -> Settings:
        fresh = {"artifacts": _new_prefix()} if backend_overrides else {}
        return make_settings(tmp_path, **{**backend_overrides, **fresh, **overrides})

    return make


def make_settings(tmp_path: Path, **overrides) -> Settings:
    """Settings for one test: its own LBDN_HOME, data dir and queue names."""
    values = dict(
        home=tmp_path / "var",
        data_dir=tmp_path / "data",
        queue_prefix=f"t{RUN_ID}{secrets.token_hex(3)}.",
        lease_s=6.0,
        reap_interval_s=1.0,
        progress_interval_s=0.2,
        cancel_poll_s=0.2,
        sse_poll_s=0.1,
        access_log=True,  # a failed test's server log shows each request
    )
    return Settings(_env_file=None, **{**values, **QUICK, **overrides})


@pytest.fixture
def settings(tmp_path: Path, backend_overrides: dict[str, str]) -> Settings:
    return make_settings(tmp_path, **backend_overrides)


@pytest.fixture
def client(settings: Settings):
    """The real app (lifespan included) on a fresh SQLite store; no worker consumes its queue."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def add_key():
    """add_key(app, tenant) -> the bearer secret of a new API key of `tenant` in the app's store."""
    from core.store import keys, transaction

    def add(app, tenant: str) -> str:
        with transaction(app.state.services.sessions) as s:
            return keys.create_key(s, tenant)[1]

    return add


@pytest.fixture(scope="session")
def trained_model():
    """trained_model(app, tenant, spec, ...) -> id of a succeeded job holding random weights."""
    return save_trained_model


def save_trained_model(app, tenant: str, spec: dict, *, classes=None, mean=(0.0,), std=(1.0,)) -> str:
    """A succeeded training job with randomly initialised weights, made without a worker."""
    import torch

    from core.store import jobs, leases, transaction
    from lipcore.checkpoint import save_model
    from lipcore.models import build
    from lipcore.spec import ExperimentSpec

    es = ExperimentSpec.model_validate(spec)
    with transaction(app.state.services.sessions) as s:
        job, _ = jobs.create_job(s, tenant=tenant, kind="train", spec=es.model_dump(mode="json"))
        leases.acquire(s, job.id, "test", 60)
        leases.finish(s, job.id, "test", "succeeded", result={"test_acc": 12.5, "cert_acc_36": 3.0})
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "model.safetensors"
        save_model(staged, build(es), es, classes=classes, mean=mean, std=std)
        app.state.services.artifacts.put(job.id, "model.safetensors", staged)  # local folder or S3
    return job.id


def stored_jobs(settings: Settings) -> list[str]:
    """The ids of jobs that have files in the settings' artifact store (local folder or S3 prefix)."""
    store = settings.artifact_store()
    if not store.remote:
        return sorted(p.name for p in settings.jobs_dir.iterdir()) if settings.jobs_dir.is_dir() else []
    import obstore

    from core.artifacts import S3Artifacts

    assert isinstance(store, S3Artifacts)
    found = obstore.list_with_delimiter(store.store, store.prefix + "/")
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in found["common_prefixes"])


# ---- real processes: `lbdn api` (uvicorn) and `lbdn worker` (Celery) ----------------------------
class Proc:
    """A subprocess in its own session (so kill -9 reaches its pool children), logging to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, stop_signal: str = "SIGTERM") -> None:
        import subprocess
        import sys

        self.log, self.stop_signal = log, stop_signal
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", *args],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=Path(__file__).resolve().parents[2],
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 300.0) -> None:
        """Wait for `needle` in the log; `timeout` only guards against a hang (a loaded machine
        can take a minute to start a Celery worker)."""

        def seen() -> bool:
            if self.proc.poll() is not None and needle not in self.text():
                raise AssertionError(f"process exited ({self.proc.returncode}):\n{self.text()[-3000:]}")
            return needle in self.text()

        wait_until(repr(needle), seen, bound=timeout, details=lambda: self.text()[-3000:])

    def kill9(self) -> None:
        import signal

        os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and its pool children, like a lost machine
        self.proc.wait()

    def stop(self) -> None:
        import signal
        import subprocess

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, getattr(signal, self.stop_signal))
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._out.close()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a subprocess exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LBDN_")}
    for name, value in settings.model_dump().items():
        if isinstance(value, SecretStr):  # str() of one is its mask, '**********'
            value = value.get_secret_value()
        if value is not None:
            env[f"LBDN_{name.upper()}"] = str(value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Service:
    """`lbdn api` on a free port plus any number of `lbdn worker` processes, all on one store."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.settings, self.logs, self.env = settings, logs, settings_env(settings)
        self.url = f"http://127.0.0.1:{port}"
        self.procs: list[Proc] = []
        self.api = self._start(["api", "--host", "127.0.0.1", "--port", str(port)], "api")
        self.api.wait_for("Uvicorn running on")  # (bound: uvicorn logs "startup complete" before it listens)

    def _start(self, args: list[str], name: str, stop_signal: str = "SIGTERM") -> Proc:
        proc = Proc(args, self.env, self.logs / f"{name}-{len(self.procs)}.log", stop_signal)
        self.procs.append(proc)
        return proc

    def worker(self) -> Proc:
        # Celery's prefork pool with one process, as a GPU worker runs; its children are recycled
        # only in production (worker_max_tasks_per_child=1), which would cost a start per job here.
        # Stopped with SIGKILL at the end: Celery's warm and cold shutdowns both take 5-7 s even
        # when idle, and losing a worker is something the service is built to survive anyway.
        w = self._start(["worker", "--concurrency", "1"], "worker", stop_signal="SIGKILL")
        w.wait_for(" ready.")
        return w

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop()


@pytest.fixture
def service_factory(tmp_path: Path, request: pytest.FixtureRequest, backend_overrides: dict[str, str]):
    """service_factory(broker='redis'|'embedded', db='postgres'|'sqlite', **settings) -> Service."""

    def make(broker: str, db: str, **overrides) -> Service:
        urls: dict[str, str] = {"lipschitz_restarts": 0}
        if broker == "redis":
            urls["broker_url"] = request.getfixturevalue("redis_url")
        if db == "postgres":
            urls["database_url"] = request.getfixturevalue("own_pg_url")
        settings = make_settings(tmp_path, **{**backend_overrides, **urls, **overrides})
        logs = tmp_path / "logs"
        logs.mkdir(exist_ok=True)
        svc = Service(settings, logs)
        # a finalizer added now runs before the teardown of the database made just above
        request.addfinalizer(lambda: _close(svc, request, logs))
        return svc

    return make


def _close(svc: Service, request: pytest.FixtureRequest, logs: Path) -> None:
    svc.close()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for log in sorted(logs.glob("*.log")):
            print(f"==== {log.name}\n{log.read_text(errors='replace')[-4000:]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep

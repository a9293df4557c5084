"""A real `lbdn serve` for the service benchmarks (bench/load.py, bench/fault_drill.py).

Starts the API and its worker as `python -m api.cli serve` in a fresh LBDN_HOME, on the embedded
defaults or on Redis + PostgreSQL (a database of its own, dropped at the end; Redis queue names of
its own), with an API key, and stops every process it started (the serve process and the worker's
session).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("LBDN_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgDatabase:
    """A PostgreSQL database made for one run and dropped (with its connections) afterwards."""

    def __init__(self, prefix: str) -> None:
        import psycopg

        self.name = f"{prefix}_{secrets.token_hex(4)}"
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')
        self.url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{self.name}"

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class Serve:
    """`lbdn serve` on a free port; `env` holds its LBDN_ settings, `key` a bearer secret."""

    def __init__(self, *, broker_url: str | None = None, database_url: str | None = None, **extra: str) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="lbdn-bench-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LBDN_")}
        env.update(
            LBDN_HOME=str(self.home / "var"),
            LBDN_DATA_DIR=str(self.home / "data"),
            LBDN_PORT=str(self.port),
            LBDN_QUEUE_PREFIX=f"bench{secrets.token_hex(3)}.",
            LBDN_LIPSCHITZ_RESTARTS="0",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=str(ROOT),
        )
        if broker_url:
            env["LBDN_BROKER_URL"] = broker_url
        if database_url:
            env["LBDN_DATABASE_URL"] = database_url
        env.update({f"LBDN_{k.upper()}": str(v) for k, v in extra.items()})
        self.env = env
        out = subprocess.run(
            [sys.executable, "-m", "api.cli", "keys", "create", "--tenant", "bench"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        self.key = out.stdout.strip().splitlines()[-1]
        self.headers = {"Authorization": f"Bearer {self.key}"}
        self.proc: subprocess.Popen[bytes] | None = None
        self.worker_pid: int | None = None
        self.log = self.home / "serve.log"
        self.start()

    def start(self, timeout: float = 120.0) -> None:
        """Start `lbdn serve` and wait until /healthz answers and the worker is up."""
        self._out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve"],
            env=self.env,
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lbdn serve exited:\n{self.log.read_text()[-3000:]}")
            text = self.log.read_text(errors="replace")
            pids = [line.rsplit("worker pid", 1)[1].split()[0] for line in text.splitlines() if "worker pid" in line]
            if pids:
                self.worker_pid = int(pids[-1])
            try:
                if pids and httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"lbdn serve did not start in {timeout:.0f}s:\n{self.log.read_text()[-3000:]}")

    def current_worker_pid(self) -> int | None:
        """The pid (and process group) of the worker `lbdn serve` started last."""
        text = self.log.read_text(errors="replace")
        pids = [line.rsplit("worker pid", 1)[1].split()[0] for line in text.splitlines() if "worker pid" in line]
        return int(pids[-1]) if pids else None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> float:
        """Signal `lbdn serve` and wait for it; returns the seconds it took. Kills leftovers."""
        t0 = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        took = time.monotonic() - t0
        for pgid in (self.proc.pid if self.proc else None, self.current_worker_pid()):
            if pgid:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc is not None:
            self.proc.wait()
            self._out.close()
        return took

    def train_toy(self, epochs: int = 3, timeout: float = 300.0) -> str:
        """Submit a Toy training job and wait until it succeeded; returns its id (a model id)."""
        job = httpx.post(
            f"{self.url}/v1/jobs",
            headers=self.headers,
            json={"kind": "train", "spec": {"model": "Toy", "layer": "Sandwich", "gamma": 1.0, "epochs": epochs}},
            timeout=30,
        ).json()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            status = httpx.get(f"{self.url}/v1/jobs/{job['id']}", headers=self.headers, timeout=30).json()["status"]
            if status == "succeeded":
                return job["id"]
            if status in ("failed", "cancelled"):
                raise RuntimeError(f"the Toy job {status}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)
        raise RuntimeError("the Toy job did not finish")

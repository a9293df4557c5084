"""SIGTERM to `lbdn serve` (what Docker, systemd and supervisors send) stops the API and its worker:
no process of the service survives, the running job checkpoints and goes back to the queue, and
the next `lbdn serve` resumes it from that checkpoint.

Event-driven: the test waits for the job to have a checkpoint, and for processes to exit, with
generous bounds that only guard against a hang; nothing depends on the machine's speed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx

from core.store import jobs, make_engine, session_factory
from tests.service.conftest import make_settings, settings_env
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
LONG_TOY = {"model": "Toy", "layer": "Sandwich", "gamma": 1.0, "epochs": 100000}  # never ends by itself


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, state) of every live process (Linux /proc)."""
    table = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            table[int(d.name)] = (int(fields[1]), int(fields[3]), fields[0])
    return table


def _service_processes(root_pid: int) -> set[int]:
    """`lbdn serve`, its descendants, and every process in the sessions they lead (the worker's pool)."""
    table = _proc_table()
    tree, grew = {root_pid}, True
    while grew:
        more = {pid for pid, (ppid, _, _) in table.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    led = {pid for pid in tree if pid in table and table[pid][1] == pid}  # sessions started by the service
    return tree | {pid for pid, (_, sid, _) in table.items() if sid in led}


def _alive(pids: set[int]) -> set[int]:
    table = _proc_table()
    return {pid for pid in pids if pid in table and table[pid][2] != "Z"}


def _wait(what: str, check, bound: float = 300.0, log: Path | None = None):
    """wait_until, with the end of the service's log in the message."""
    return wait_until(what, check, bound=bound, every=0.2, details=(lambda: log.read_text()[-4000:]) if log else None)


class Serve:
    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.url, self.log = f"http://127.0.0.1:{port}", log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        _wait("lbdn serve answering /healthz and its worker ready", self._ready, log=log)

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-4000:]
        try:
            up = httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False
        return up and " ready." in self.log.read_text(errors="replace")

    def job(self, job_id: str) -> dict:
        return httpx.get(f"{self.url}/v1/jobs/{job_id}", timeout=60).json()

    def kill_all(self) -> None:
        import os

        for pid in _alive(_service_processes(self.proc.pid)):
            os.kill(pid, signal.SIGKILL)
        self.proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_stops_api_and_worker_and_the_job_resumes(tmp_path):
    settings = make_settings(tmp_path, lipschitz_restarts=0)
    env = settings_env(settings)
    log = tmp_path / "serve.log"
    port = _free_port()
    svc = Serve(env, port, log)
    try:
        job = httpx.post(f"{svc.url}/v1/jobs", json={"kind": "train", "spec": LONG_TOY}, timeout=60).json()
        ckpt = settings.job_dir(job["id"]) / "checkpoint.safetensors"
        # a finished epoch (checkpoint_every=1) and the job still running: something to resume
        _wait("the job's first epoch", lambda: svc.job(job["id"]).get("metrics") and ckpt.is_file(), log=log)
        procs = _service_processes(svc.proc.pid)
        assert len(procs) >= 3, procs  # serve (API), the worker, its pool child

        svc.proc.send_signal(signal.SIGTERM)  # `kill <pid of lbdn serve>`
        svc.proc.wait(timeout=300)
        _wait("every process of the service gone", lambda: not _alive(procs), bound=60, log=log)
        assert "lbdn: stopped" in log.read_text()
        assert "did not stop" not in log.read_text()  # the warm shutdown finished by itself
    finally:
        svc.kill_all()
    engine = make_engine(settings.db_url)
    with session_factory(engine)() as s:
        stopped = jobs.get_job(s, None, job["id"])
        states = [e.data for e in jobs.events_after(s, job["id"], 0, kinds=("state",))]
    engine.dispose()
    assert stopped.status == "queued" and stopped.lease_owner is None, stopped.status  # back in the queue
    assert states[-1] == {"status": "queued", "interrupted": "worker shutdown"}

    svc = Serve(env, port, log)  # the next start: the API re-sends queued jobs, the worker resumes it
    try:
        resumed = _wait(
            "the job running again from its checkpoint",
            lambda: (j := svc.job(job["id"]))["status"] == "running" and j.get("resumed_from") and j,
            log=log,
        )
        assert resumed["resumed_from"]["epoch"] >= 1
    finally:
        httpx.post(f"{svc.url}/v1/jobs/{job['id']}/cancel", timeout=60)
        procs = _service_processes(svc.proc.pid)
        svc.proc.send_signal(signal.SIGTERM)
        svc.proc.wait(timeout=300)
        _wait("every process of the service gone (second run)", lambda: not _alive(procs), bound=60, log=log)
        svc.kill_all()

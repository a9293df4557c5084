"""Drill across hosts: three "hosts" on one machine share nothing but S3, PostgreSQL and Redis.

    python bench/host_drill.py [--epochs 8]

Each host is its own LBDN_HOME (A/var, B/var, C/var under a fresh folder); all of them have
LBDN_ARTIFACTS=s3://lbdn/<run> on a moto S3 server (its server mode on loopback: a real S3-protocol
HTTP server), one PostgreSQL database made for the run, and Redis on 127.0.0.1:6379 (queues of the
run's own prefix). The API runs on A, workers on B and C:
1. a Toy training job starts on B (C is not running yet, so nothing else can take it);
2. once B has reported two epochs and pushed a checkpoint, B is frozen (SIGSTOP: it can train no
   further, whatever the machine's speed), C is started, then B is SIGKILLed (its process group,
   like a lost machine);
3. B's lease runs out, C's reaper queues the job again, C pulls the stored checkpoint and finishes it;
4. from A: the job's artifacts are listed and model.safetensors downloaded (streamed from S3), the
   model certifies an input and exports to ONNX; deleting the job removes its objects.
It reports each step's outcome and checks: every epoch recorded once, the job finished on C (its
`worker` names C's process), and no two hosts' folders overlap. tests/service/test_hosts.py runs the
same drill with fewer epochs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
ROOT = Path(__file__).resolve().parents[1]
TOY = {"model": "Toy", "layer": "Sandwich", "gamma": 2.0}
DRILL_SETTINGS = {"LBDN_LEASE_S": "5", "LBDN_REAP_INTERVAL_S": "1", "LBDN_LIPSCHITZ_RESTARTS": "0"}


def wait(what: str, check: Callable[[], Any], bound: float = 300.0) -> Any:
    """Poll `check` until it is truthy (the bound only stops a hang); its exceptions end the wait."""
    end = time.monotonic() + bound
    while not (value := check()):
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not seen within {bound:.0f} s")
        time.sleep(0.2)
    return value


class HostProc:
    """`lbdn <args>` of one host, in its own session (a kill reaches its pool children), logged."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", *args],
            env=env,
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None and needle not in self.text():
                raise AssertionError(f"{self.log.name} exited:\n{self.text()[-3000:]}")
            return needle in self.text()

        wait(f"{needle!r} in {self.log.name}", seen)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait()
        self._out.close()


class Hosts:
    """The three hosts' environments (shared: the store URLs; own: LBDN_HOME and data dir)."""

    def __init__(self, root: Path, shared: dict[str, str]) -> None:
        self.root = root
        base = {k: v for k, v in os.environ.items() if not k.startswith("LBDN_")}
        base.update({**DRILL_SETTINGS, **{k: v for k, v in shared.items() if k.startswith("LBDN_")}})
        base["PYTHONUNBUFFERED"] = "1"
        self.env = {
            h: {**base, "LBDN_HOME": str(root / h / "var"), "LBDN_DATA_DIR": str(root / h / "data")} for h in "ABC"
        }
        self.procs: list[HostProc] = []
        (root / "logs").mkdir(parents=True, exist_ok=True)

    def home(self, host: str) -> Path:
        return Path(self.env[host]["LBDN_HOME"])

    def start(self, host: str, args: list[str], ready: str) -> HostProc:
        proc = HostProc(args, self.env[host], self.root / "logs" / f"{host}-{args[0]}.log")
        self.procs.append(proc)
        proc.wait_for(ready)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def _epochs(api: httpx.Client, job_id: str) -> list[int]:
    return [m["epoch"] for m in api.get(f"/v1/jobs/{job_id}/metrics").json()["items"]]


def _artifact_names(api: httpx.Client, job_id: str) -> set[str]:
    return {a["name"] for a in api.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]}


def _job(api: httpx.Client, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = api.get(f"/v1/jobs/{job_id}").json()
    if job["status"] == "failed":
        raise AssertionError(f"job failed: {job['error']}")
    return job


def _start_and_lose_b(hosts: Hosts, api: httpx.Client, epochs: int) -> tuple[str, dict[str, Any], HostProc]:
    """The job started on B, B frozen after two checkpointed epochs, C started, B killed."""
    b = hosts.start("B", ["worker", "--concurrency", "1"], " ready.")
    job_id = api.post("/v1/jobs", json={"kind": "train", "spec": {**TOY, "epochs": epochs}}).json()["id"]
    wait(
        "two epochs and a stored checkpoint on B",
        lambda: len(_epochs(api, job_id)) >= 2 and "checkpoint.safetensors" in _artifact_names(api, job_id),
    )
    b.signal(signal.SIGSTOP)  # no further step from here on: the kill lands mid-run on any machine
    frozen = _job(api, job_id)
    frozen["epochs_seen"] = len(_epochs(api, job_id))
    if frozen["status"] != "running":
        raise AssertionError(f"B finished the job before it was frozen ({frozen['status']}): use more --epochs")
    c = hosts.start("C", ["worker", "--concurrency", "1"], " ready.")
    b.signal(signal.SIGKILL)
    frozen["b_pid"], frozen["t_kill"] = b.proc.pid, time.monotonic()
    return job_id, frozen, c


def _served_by_a(api: httpx.Client, job_id: str, root: Path) -> dict[str, Any]:
    """A lists and downloads the job's files, certifies with its model and exports it."""
    listed = {a["name"]: a["size"] for a in api.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]}
    path = root / "downloaded.safetensors"
    with api.stream("GET", f"/v1/jobs/{job_id}/artifacts/model.safetensors") as r, path.open("wb") as f:
        r.raise_for_status()
        for chunk in r.iter_bytes():
            f.write(chunk)
    certify = api.post(f"/v1/models/{job_id}/certify", json={"inputs": [[0.1], [-1.0]], "scale": "model"})
    export = api.get(f"/v1/models/{job_id}/export", params={"format": "onnx"})
    return {
        "artifacts": sorted(listed),
        "download_ok": path.stat().st_size == listed.get("model.safetensors"),
        "certify": certify.status_code,
        "certified_inputs": len(certify.json().get("results", [])) if certify.status_code == 200 else 0,
        "export": export.status_code,
        "export_bytes": len(export.content),
    }


def _overlap(homes: list[Path]) -> list[str]:
    """Pairs of host folders of which one lies within the other (none may)."""
    return [f"{a} / {b}" for a in homes for b in homes if a != b and b.is_relative_to(a)]


def run_drill(root: Path, shared: dict[str, str], epochs: int, store: Any) -> dict[str, Any]:
    """The drill in `root` with the URLs of `shared` (LBDN_DATABASE_URL, LBDN_BROKER_URL,
    LBDN_QUEUE_PREFIX, LBDN_ARTIFACTS, LBDN_S3_*); `store` is that artifact store, read directly to
    check what A's delete removed. Returns the report (see main)."""
    hosts = Hosts(root, shared)
    try:
        hosts.start("A", ["api", "--host", "127.0.0.1", "--port", shared["port"]], "Uvicorn running on")
        api = httpx.Client(base_url=f"http://127.0.0.1:{shared['port']}", timeout=120)
        job_id, frozen, c = _start_and_lose_b(hosts, api, epochs)
        done = wait(
            "the job finished on another host", lambda: _job(api, job_id)["status"] == "succeeded" and _job(api, job_id)
        )
        report: dict[str, Any] = {
            "job": job_id,
            "epochs_before_kill": frozen["epochs_seen"],
            "started_on_b": frozen["worker"].startswith(f"lbdn-{frozen['b_pid']}@"),
            "finished_on_c": done["worker"].startswith(f"lbdn-{c.proc.pid}@"),
            "attempts": done["attempt"],
            "resumed_from_epoch": (done.get("resumed_from") or {}).get("epoch"),
            "kill_to_finish_s": round(time.monotonic() - frozen["t_kill"], 1),
            "epochs": _epochs(api, job_id),
            "b_scratch": sorted(p.name for p in (hosts.home("B") / "jobs" / job_id).glob("*")),
            "c_scratch_left": (hosts.home("C") / "jobs" / job_id).exists(),
        }
        report.update(_served_by_a(api, job_id, root))
        report["a_cache_files"] = len([p for p in (hosts.home("A") / "artifact-cache").rglob("*") if p.is_file()])
        report["objects_before_delete"] = len(store.list(job_id))
        report["delete"] = api.delete(f"/v1/jobs/{job_id}").status_code
        report["objects_after_delete"] = len(store.list(job_id))
        report["overlapping_homes"] = _overlap([hosts.home(h) for h in "ABC"])
        return report
    finally:
        hosts.close()


def drill_ok(report: dict[str, Any], epochs: int) -> list[str]:
    """What the drill requires; the list of what failed (empty: passed)."""
    checks = {
        "every epoch once": report["epochs"] == list(range(1, epochs + 1)),
        "started on B": report["started_on_b"],
        "finished on C, resumed from B's checkpoint": report["finished_on_c"]
        and (report["resumed_from_epoch"] or 0) >= 2,
        "A served download, certify and export": report["download_ok"]
        and report["certify"] == 200
        and report["export"] in (200, 501),
        "delete removed every object": report["objects_before_delete"] > 0 and report["objects_after_delete"] == 0,
        "no two hosts' folders overlap": not report["overlapping_homes"],
    }
    return [name for name, ok in checks.items() if not ok]


def main() -> None:
    import secrets

    from moto.server import ThreadedMotoServer

    from bench.service import PgDatabase, free_port
    from core.artifacts import open_store

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--dir", type=Path, default=Path(f"/tmp/lbdn-host-drill-{secrets.token_hex(3)}"))
    args = p.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's line per request
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    endpoint = "http://{}:{}".format(*s3.get_host_and_port())
    httpx.put(f"{endpoint}/lbdn").raise_for_status()  # CreateBucket
    db = PgDatabase("lbdn_hosts")
    shared = s3_settings(endpoint, f"s3://lbdn/drill-{secrets.token_hex(3)}")
    shared.update(
        LBDN_DATABASE_URL=db.url,
        LBDN_BROKER_URL="redis://127.0.0.1:6379/0",
        LBDN_QUEUE_PREFIX=f"hostdrill{secrets.token_hex(3)}.",
        port=str(free_port()),
    )
    store = open_store(
        shared["LBDN_ARTIFACTS"], args.dir / "unused", args.dir / "cache", 1 << 30, **s3_kwargs(endpoint)
    )
    try:
        report = run_drill(args.dir, shared, args.epochs, store)
    finally:
        db.drop()
        s3.stop()
    print(json.dumps(report, indent=2))
    failed = drill_ok(report, args.epochs)
    print("drill passed" if not failed else f"drill FAILED: {', '.join(failed)}")
    sys.exit(1 if failed else 0)


def s3_kwargs(endpoint: str) -> dict[str, str]:
    """open_store's S3 arguments for a loopback moto server (which checks no signatures)."""
    return {"endpoint": endpoint, "region": "us-east-1", "access_key_id": "testing", "secret_access_key": "testing"}


def s3_settings(endpoint: str, url: str) -> dict[str, str]:
    """The same as LBDN_ environment variables, with LBDN_ARTIFACTS=url."""
    return {"LBDN_ARTIFACTS": url, **{f"LBDN_S3_{k.upper()}": v for k, v in s3_kwargs(endpoint).items()}}


if __name__ == "__main__":
    main()

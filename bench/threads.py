"""A 20-epoch Toy job through `lbdn serve`'s defaults against the whole in-process
`OMP_NUM_THREADS=1 python -m lipcore --mode train` run of the same spec, one after the other, with
one busy loop (`yes > /dev/null`) beside them, as a worker host rarely idle (issue 18).

    PYTHONPATH=. .venv/bin/python bench/threads.py [--epochs 20] [--no-busy]

Prints both times, their ratio and `uptime`. The serve side sets no thread variable (none of
OMP_NUM_THREADS, LBDN_TORCH_THREADS): its threads come from lipcore.runtime.torch_threads. Its time
runs from the submit to the job's end (the server is up before); the lipcore side is the whole
process, imports included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service import ROOT, Serve  # bench/ is not a package


def in_process(epochs: int, root: Path) -> tuple[float, dict[str, object]]:
    """Seconds of the whole `python -m lipcore` process, and the spec it trained."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LBDN_")}
    env["OMP_NUM_THREADS"] = "1"
    argv = [sys.executable, "-m", "lipcore", "--mode", "train", "-m", "Toy", "-d", "square_wave"]
    argv += ["-e", str(epochs), "--root_dir", str(root / "runs")]  # the paper appends _seed<N>
    t0 = time.monotonic()
    subprocess.run(argv, env=env, cwd=ROOT, check=True, capture_output=True, timeout=1800)
    took = time.monotonic() - t0
    (spec,) = root.rglob("spec.json")
    return took, json.loads(spec.read_text())


def through_serve(spec: dict[str, object]) -> float:
    """Seconds from submit to succeeded of `spec` on a fresh `lbdn serve` with its defaults."""
    os.environ.pop("OMP_NUM_THREADS", None)  # Serve passes our environment on, LBDN_ variables aside
    os.environ.pop("LBDN_TORCH_THREADS", None)
    serve = Serve(lipschitz_restarts="10")  # serve's default (bench/service.py turns it off)
    try:
        t0 = time.monotonic()
        job = httpx.post(
            f"{serve.url}/v1/jobs", headers=serve.headers, json={"kind": "train", "spec": spec}, timeout=60
        ).json()
        posted = time.monotonic() - t0
        while True:
            status = httpx.get(f"{serve.url}/v1/jobs/{job['id']}", headers=serve.headers, timeout=60).json()
            if status["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.2)
        took = time.monotonic() - t0
        if status["status"] != "succeeded":
            raise RuntimeError(f"the job {status['status']}: {status.get('error')}")
        print(f"  serve: the submit request took {posted:.1f} s")
        _breakdown(serve, status)
        return took
    finally:
        serve.stop()


def _breakdown(serve: Serve, job: dict[str, object]) -> None:
    """Where the served job's time went: queue, epochs (train + test), the rest (set-up, summary)."""
    from datetime import datetime

    def at(key: str) -> datetime:
        return datetime.fromisoformat(str(job[key]))

    rows = httpx.get(f"{serve.url}/v1/jobs/{job['id']}/metrics", headers=serve.headers, timeout=60).json()["items"]
    epochs = sum(r["train_time_s"] + r["test_time_s"] for r in rows)
    run = (at("finished_at") - at("started_at")).total_seconds()
    queued = (at("started_at") - at("created_at")).total_seconds()
    print(
        f"  serve: queued {queued:.1f} s, ran {run:.1f} s of which epochs {epochs:.1f} s (on {job.get('device', '?')})"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--no-busy", action="store_true", help="without the busy loop beside")
    a = p.parse_args()
    busy = None if a.no_busy else subprocess.Popen(["yes"], stdout=subprocess.DEVNULL)
    try:
        with tempfile.TemporaryDirectory(prefix="lbdn-threads-") as tmp:
            alone, spec = in_process(a.epochs, Path(tmp))
        served = through_serve(spec)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"busy loop beside: {'no' if a.no_busy else 'yes'}; cores usable: {len(os.sched_getaffinity(0))}")
    print(f"in-process  OMP_NUM_THREADS=1 python -m lipcore, {a.epochs} Toy epochs: {alone:6.1f} s (whole process)")
    print(f"lbdn serve  defaults, same spec, submit to succeeded:      {served:6.1f} s")
    print(f"ratio serve / in-process: {served / alone:.2f}x")
    print(f"uptime: {uptime}")


if __name__ == "__main__":
    main()

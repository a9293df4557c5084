"""CPU cost of one request in the API process, per route: `lbdn serve` started with a key, a
trained Toy model, then N sequential requests per route from this process; the API process's CPU
time (from /proc) before and after gives milliseconds of server CPU per request. Sequential, so the
number does not depend on how busy the machine is (unlike the latencies of bench/load.py).

    python bench/request_cost.py [--stack] [-n 400]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.service import PgDatabase, Serve

REDIS_URL = "redis://127.0.0.1:6379/0"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (threads included), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def api_pid(svc: Serve) -> int:
    """`lbdn serve` runs the API in its own process; the worker is a child."""
    return svc.proc.pid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stack", action="store_true", help="Redis + PostgreSQL instead of the embedded defaults")
    ap.add_argument("-n", type=int, default=400, help="requests per route")
    args = ap.parse_args()
    db = PgDatabase("lbdn_cost") if args.stack else None
    svc = Serve(broker_url=REDIS_URL if args.stack else None, database_url=db.url if db else None)
    try:
        model = svc.train_toy()
        pid = api_pid(svc)
        body = {"inputs": [[0.1 * i - 0.8] for i in range(16)], "scale": "model"}
        routes = {
            "GET /healthz": lambda c: c.get("/healthz"),
            "GET /v1/jobs/{id}": lambda c: c.get(f"/v1/jobs/{model}"),
            "POST /v1/models/{id}/certify": lambda c: c.post(f"/v1/models/{model}/certify", json=body),
        }
        with httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {svc.key}"}, timeout=60) as c:
            print(
                f"API process CPU per request (ms), {args.n} sequential requests per route, "
                f"{'Redis + PostgreSQL' if args.stack else 'embedded'}:"
            )
            for name, call in routes.items():
                for _ in range(20):  # warm: caches, certify processes, connections
                    assert call(c).status_code == 200
                t0, w0 = cpu_seconds(pid), time.perf_counter()
                for _ in range(args.n):
                    call(c)
                cpu, wall = cpu_seconds(pid) - t0, time.perf_counter() - w0
                print(f"  {name:32s} {1000 * cpu / args.n:7.2f} ms CPU   {1000 * wall / args.n:7.2f} ms wall")
    finally:
        svc.stop()
        if db:
            db.drop()


if __name__ == "__main__":
    main()

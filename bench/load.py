"""Load test of the service: pollers, certify clients and a liveness prober against `lbdn serve`.

    python bench/load.py                 # embedded defaults (SQLite store, SQLite broker)
    python bench/load.py --stack         # Redis (127.0.0.1:6379) + PostgreSQL (127.0.0.1:5432)
    python bench/load.py --url URL --key KEY --model MODEL_ID    # an already running service

It starts `lbdn serve` with an API key, trains a Toy model on its worker, then for --duration
seconds runs, in one asyncio process with httpx:
- --pollers pollers: each one GETs /v1/jobs/{id} (the trained model's job), then sleeps so that it
  starts one request every --poll-interval seconds (1 s: a dashboard or `watch`-style client); a
  slow answer delays its next poll, never stacks requests; pollers start at random offsets;
- --certifiers certify clients: each POSTs /v1/models/{id}/certify with 16 Toy inputs in a closed
  loop (the next request as soon as the answer arrives, no think time): the worst case for CPU;
- one prober: GET /healthz every 0.1 s.
It prints requests/s, p50/p99 latency per route and the error count (any non-2xx or failed request).
Latencies are measured by the client, on the same 2 CPU cores as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.service import PgDatabase, Serve  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/0"


class Recorder:
    def __init__(self) -> None:
        self.lat: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.samples: dict[str, list[str]] = defaultdict(list)

    async def call(self, route: str, coro) -> None:
        t0 = time.perf_counter()
        try:
            r = await coro
            ok = 200 <= r.status_code < 300
            why = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as e:
            ok, why = False, f"{type(e).__name__}: {e}"
        self.lat[route].append(time.perf_counter() - t0)
        if not ok:
            self.errors[route] += 1
            if len(self.samples[route]) < 3:
                self.samples[route].append(why)


async def run_load(url: str, key: str, model: str, args: argparse.Namespace) -> Recorder:
    rec = Recorder()
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=args.pollers + args.certifiers + 10, max_keepalive_connections=None)
    timeout = httpx.Timeout(60.0)
    rng = random.Random(0)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as warm:
        # the first certify loads torch and the model in the API process: not part of the measurement
        r = await warm.post(f"/v1/models/{model}/certify", json={"inputs": [[0.0]], "scale": "model"})
        r.raise_for_status()
    end = time.monotonic() + args.duration

    async def poller(client: httpx.AsyncClient) -> None:
        await asyncio.sleep(rng.uniform(0, args.poll_interval))
        while time.monotonic() < end:
            t0 = time.monotonic()
            await rec.call("GET /v1/jobs/{id}", client.get(f"/v1/jobs/{model}"))
            await asyncio.sleep(max(0.0, args.poll_interval - (time.monotonic() - t0)))

    async def certifier(client: httpx.AsyncClient) -> None:
        body = {"inputs": [[rng.uniform(-2, 2)] for _ in range(16)], "scale": "model"}
        while time.monotonic() < end:
            await rec.call("POST /v1/models/{id}/certify", client.post(f"/v1/models/{model}/certify", json=body))

    async def prober(client: httpx.AsyncClient) -> None:
        while time.monotonic() < end:
            await rec.call("GET /healthz", client.get("/healthz"))
            await asyncio.sleep(0.1)

    async with (
        httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=timeout) as client,
        httpx.AsyncClient(base_url=url, timeout=timeout) as probe_client,
    ):
        tasks = [poller(client) for _ in range(args.pollers)]
        tasks += [certifier(client) for _ in range(args.certifiers)]
        tasks.append(prober(probe_client))
        await asyncio.gather(*tasks)
    return rec


def proc_cpu(pid: int) -> float:
    """user + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(rec: Recorder, duration: float, title: str) -> int:
    print(f"== {title}: {duration:.0f} s")
    print(f"{'route':34s} {'requests':>8s} {'req/s':>7s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} {'errors':>6s}")
    total_errors = 0
    for route, lat in sorted(rec.lat.items()):
        lat = sorted(lat)
        p50, p99 = (1000 * lat[min(len(lat) - 1, int(q * len(lat)))] for q in (0.5, 0.99))
        total_errors += rec.errors[route]
        print(
            f"{route:34s} {len(lat):8d} {len(lat) / duration:7.1f} {p50:8.1f} {p99:8.1f} "
            f"{1000 * lat[-1]:8.1f} {rec.errors[route]:6d}"
        )
    print(f"errors: {total_errors}")
    for route, samples in rec.samples.items():
        for s in samples:
            print(f"  {route}: {s}")
    return total_errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stack", action="store_true", help="Redis + PostgreSQL instead of the embedded defaults")
    ap.add_argument("--url", help="target a running service (with --key and --model) instead of starting one")
    ap.add_argument("--key")
    ap.add_argument("--model", help="id of a trained Toy model of the key's tenant")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--pollers", type=int, default=200)
    ap.add_argument("--poll-interval", type=float, default=1.0)
    ap.add_argument("--certifiers", type=int, default=20)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="an LBDN_ setting of the served API")
    args = ap.parse_args()
    extra = dict(kv.split("=", 1) for kv in args.set)

    if args.url:
        rec = asyncio.run(run_load(args.url, args.key, args.model, args))
        sys.exit(1 if report(rec, args.duration, f"load on {args.url}") else 0)

    db = PgDatabase("lbdn_load") if args.stack else None
    svc = None
    try:
        svc = Serve(broker_url=REDIS_URL if args.stack else None, database_url=db.url if db else None, **extra)
        model = svc.train_toy()
        cpu0, api0 = time.process_time(), proc_cpu(svc.proc.pid)
        rec = asyncio.run(run_load(svc.url, svc.key, model, args))
        cpu_note = (
            f"CPU seconds used during the run: API process {proc_cpu(svc.proc.pid) - api0:.1f}, "
            f"this load generator {time.process_time() - cpu0:.1f}; load average {os.getloadavg()[0]:.1f}"
        )
        stack = "Redis + PostgreSQL" if args.stack else "embedded SQLite store + SQLite broker"
        title = (
            f"lbdn serve ({stack}): {args.pollers} pollers every {args.poll_interval:g} s, "
            f"{args.certifiers} certify clients (16 Toy inputs, closed loop), /healthz every 0.1 s"
        )
        errors = report(rec, args.duration, title)
        print(cpu_note)
    finally:
        if svc is not None:
            svc.stop()
        if db is not None:
            db.drop()
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()

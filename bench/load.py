"""Load test of the service: pollers, certify clients and a liveness prober against `lbdn serve`.

    python bench/load.py                 # embedded defaults (SQLite store, SQLite broker)
    python bench/load.py --stack         # Redis (127.0.0.1:6379) + PostgreSQL (127.0.0.1:5432)
    python bench/load.py --url URL --key KEY --model MODEL_ID    # an already running service
    python bench/load.py --processes 2   # `lbdn serve --api-processes 2`: two API replicas on the port
    python bench/load.py --processes 2 --closed-loop   # pollers ask again as soon as answered

It starts `lbdn serve` with an API key, trains a Toy model on its worker, then for --duration
seconds runs, in one asyncio process with aiohttp (`pip install -e ".[bench]"`):
- --pollers pollers: each one GETs /v1/jobs/{id} (the trained model's job), then sleeps so that it
  starts one request every --poll-interval seconds (1 s: a dashboard or `watch`-style client); a
  slow answer delays its next poll, never stacks requests; pollers start at random offsets; with
  --closed-loop each poller asks again as soon as it is answered (overload: what the API sheds);
- --certifiers certify clients: each POSTs /v1/models/{id}/certify with 16 Toy inputs in a closed
  loop (the next request as soon as the answer arrives, no think time): the worst case for CPU;
- two /healthz probers, every 0.1 s: one in this asyncio loop beside the 220 clients above, and one
  in a process of its own (as a container health check runs). They differ: the in-loop prober's
  answers wait for this loop (and this process's CPU share), which the server-side histogram of
  /metrics shows is where the time goes (server side: every /healthz under 25 ms).
It prints requests/s, p50/p99/max latency per route, and counts answers apart: 2xx, shed (429/503,
the API's load shedding) and errors (any other status, or a failed request). The exit status is 1
on any error, and on any shed answer unless --closed-loop (where shedding is the expected answer).
Latencies are measured by the client, on the same 2 CPU cores as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import multiprocessing
import os
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.service import PgDatabase, Serve

REDIS_URL = "redis://127.0.0.1:6379/0"


SHED = (429, 503)


class Recorder:
    def __init__(self) -> None:
        self.lat: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.shed: dict[str, int] = defaultdict(int)
        self.samples: dict[str, list[str]] = defaultdict(list)
        self.shed_sample: dict[str, str] = {}

    async def call(self, route: str, session: aiohttp.ClientSession, method: str, path: str, **kw) -> None:
        t0 = time.perf_counter()
        try:
            async with session.request(method, path, **kw) as r:
                body = await r.read()
                ok = 200 <= r.status < 300
                why = f"{r.status} {body[:200]!r}"
                if r.status in SHED:
                    self.shed[route] += 1
                    ok = True  # counted apart, not an error
                    if not self.shed_sample.get(route):
                        self.shed_sample[route] = f"{why} Retry-After: {r.headers.get('Retry-After')}"
        except (TimeoutError, aiohttp.ClientError) as e:
            ok, why = False, f"{type(e).__name__}: {e}"
        self.lat[route].append(time.perf_counter() - t0)
        if not ok:
            self.errors[route] += 1
            if len(self.samples[route]) < 3:
                self.samples[route].append(why)


def probe_healthz(url: str, duration: float, out: Any) -> None:
    """GET /healthz every 0.1 s from a process of its own (as a container health check runs its own
    curl), on one kept-alive connection; puts (latencies, errors, samples) on `out`."""
    u = urlsplit(url)
    lat: list[float] = []
    errors, samples = 0, []
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    end = time.monotonic() + duration
    while time.monotonic() < end:
        t0 = time.perf_counter()
        try:
            conn.request("GET", "/healthz")
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                errors += 1
                samples.append(f"{r.status} {body[:200]!r}")
        except (OSError, http.client.HTTPException) as e:
            errors += 1
            samples.append(f"{type(e).__name__}: {e}")
            conn.close()
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        lat.append(time.perf_counter() - t0)
        time.sleep(0.1)
    out.put((lat, errors, samples[:3]))


async def run_load(url: str, key: str, model: str, args: argparse.Namespace) -> Recorder:
    """The load, with aiohttp: its client costs a fraction of httpx's CPU per request (measured:
    httpx took more CPU than the API it loaded), and this machine's cores are shared with the API."""
    rec = Recorder()
    headers = {"Authorization": f"Bearer {key}"}
    rng = random.Random(0)
    timeout = aiohttp.ClientTimeout(total=60)
    end = time.monotonic() + args.duration

    async def poller(session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(rng.uniform(0, 0.1 if args.closed_loop else args.poll_interval))
        while time.monotonic() < end:
            t0 = time.monotonic()
            await rec.call("GET /v1/jobs/{id}", session, "GET", f"/v1/jobs/{model}")
            if not args.closed_loop:
                await asyncio.sleep(max(0.0, args.poll_interval - (time.monotonic() - t0)))

    async def certifier(session: aiohttp.ClientSession) -> None:
        body = {"inputs": [[rng.uniform(-2, 2)] for _ in range(16)], "scale": "model"}
        while time.monotonic() < end:
            await rec.call("POST /v1/models/{id}/certify", session, "POST", f"/v1/models/{model}/certify", json=body)

    async def prober(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < end:
            await rec.call("GET /healthz (load loop)", session, "GET", "/healthz")
            await asyncio.sleep(0.1)

    ctx = multiprocessing.get_context("spawn")
    probed = ctx.Queue()
    probe = ctx.Process(target=probe_healthz, args=(url, args.duration, probed), daemon=True)
    probe.start()
    connector = aiohttp.TCPConnector(limit=args.pollers + args.certifiers + 10)
    async with (
        aiohttp.ClientSession(url, headers=headers, timeout=timeout, connector=connector) as session,
        aiohttp.ClientSession(url, timeout=timeout) as probe_session,
    ):
        tasks = [poller(session) for _ in range(args.pollers)]
        tasks += [certifier(session) for _ in range(args.certifiers)]
        tasks.append(prober(probe_session))
        await asyncio.gather(*tasks)
    lat, errors, samples = await asyncio.to_thread(probed.get, True, 120)
    probe.join(10)
    route = "GET /healthz (own process)"
    rec.lat[route], rec.errors[route], rec.samples[route] = lat, errors, samples
    return rec


async def warm_up(url: str, key: str, model: str, processes: int = 2) -> None:
    """The first certify requests start the certify processes (torch, the model): not measured."""
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(url, headers=headers, timeout=aiohttp.ClientTimeout(total=300)) as warm:

        async def one() -> None:
            async with warm.post(f"/v1/models/{model}/certify", json={"inputs": [[0.0]], "scale": "model"}) as r:
                r.raise_for_status()

        for _ in range(3):
            await asyncio.gather(*(one() for _ in range(processes)))


def children(pid: int) -> list[tuple[int, bytes]]:
    """(pid, command line) of the processes whose parent is `pid` (Linux /proc)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if ppid == pid:
            found.append((int(d.name), cmd))
    return found


def api_processes(serve_pid: int) -> list[int]:
    """The processes serving the API: `lbdn serve` itself, or its replicas (api.replicas)."""
    return [pid for pid, cmd in children(serve_pid) if b"--replica-of" in cmd] or [serve_pid]


def certify_processes(api_pid: int) -> list[int]:
    """The API's certify processes (multiprocessing spawn children), by their command line."""
    return [pid for pid, cmd in children(api_pid) if b"spawn_main" in cmd]  # not the resource tracker


def wait_for_replicas(svc: Serve, processes: int, timeout: float = 300.0) -> None:
    """Every replica listening, so that the load's connections spread over all of them (a replica
    still starting has no listening socket: the kernel gives its share to the others)."""
    end = time.monotonic() + timeout
    while svc.log.read_text(errors="replace").count("Uvicorn running on") < processes:
        if time.monotonic() > end:
            raise RuntimeError(f"{processes} API replicas did not start:\n{svc.log.read_text()[-3000:]}")
        time.sleep(0.2)


def proc_cpu(pid: int) -> float:
    """user + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(rec: Recorder, duration: float, title: str) -> tuple[int, int]:
    """Print the table; returns (errors, shed answers)."""
    print(f"== {title}: {duration:.0f} s")
    print(
        f"{'route':34s} {'requests':>8s} {'req/s':>7s} {'2xx':>7s} {'429/503':>7s} "
        f"{'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} {'errors':>6s}"
    )
    total_errors = total_shed = 0
    for route, lat in sorted(rec.lat.items()):
        lat = sorted(lat)
        p50, p99 = (1000 * lat[min(len(lat) - 1, int(q * len(lat)))] for q in (0.5, 0.99))
        total_errors += rec.errors[route]
        total_shed += rec.shed[route]
        ok = len(lat) - rec.errors[route] - rec.shed[route]
        print(
            f"{route:34s} {len(lat):8d} {len(lat) / duration:7.1f} {ok:7d} {rec.shed[route]:7d} "
            f"{p50:8.1f} {p99:8.1f} {1000 * lat[-1]:8.1f} {rec.errors[route]:6d}"
        )
    print(f"errors: {total_errors}; shed (429/503): {total_shed}")
    for route, samples in rec.samples.items():
        for s in samples:
            print(f"  {route}: {s}")
    for route, sample in rec.shed_sample.items():
        print(f"  shed, {route}: {sample}")
    return total_errors, total_shed


def server_side(url: str) -> str:
    """Per route, the share of requests the API itself (middleware to last byte sent, from the
    Prometheus histogram of /metrics) answered within 25 and 100 ms: what is not client-side delay."""
    import httpx

    counts: dict[str, dict[str, float]] = defaultdict(dict)
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("lbdn_http_request_duration_seconds_bucket"):
            labels, value = line.rsplit(" ", 1)
            le = labels.split('le="')[1].split('"')[0]
            route = labels.split('route="')[1].split('"')[0]
            counts[route][le] = float(value)
    parts = []
    for route in ("/healthz", "/v1/jobs/{job_id}", "/v1/models/{model_id}/certify"):
        c = counts.get(route)
        if c and c.get("+Inf"):
            n = c["+Inf"]
            parts.append(f"{route} {100 * c['0.025'] / n:.1f}% <= 25 ms, {100 * c['0.1'] / n:.1f}% <= 100 ms")
        # (the histogram's buckets: prometheus_client's defaults, 5 ms ... 10 s)
    return "server side (the API's histogram, summed over its replicas): " + "; ".join(parts)


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
    ap.add_argument("--processes", type=int, default=1, help="API processes (lbdn serve --api-processes)")
    ap.add_argument("--closed-loop", action="store_true", help="each poller asks again as soon as it is answered")
    ap.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="an LBDN_ setting of the served API"
    )
    args = ap.parse_args()
    extra = dict(kv.split("=", 1) for kv in args.set)
    extra.setdefault("api_processes", str(args.processes))

    if args.url:
        asyncio.run(warm_up(args.url, args.key, args.model))
        rec = asyncio.run(run_load(args.url, args.key, args.model, args))
        errors, shed = report(rec, args.duration, f"load on {args.url}")
        sys.exit(1 if errors or (shed and not args.closed_loop) else 0)

    db = PgDatabase("lbdn_load") if args.stack else None
    svc = None
    try:
        svc = Serve(broker_url=REDIS_URL if args.stack else None, database_url=db.url if db else None, **extra)
        model = svc.train_toy()
        wait_for_replicas(svc, args.processes)
        errors, shed = measure(svc, model, args)
    finally:
        if svc is not None:
            svc.stop()
        if db is not None:
            db.drop()
    sys.exit(1 if errors or (shed and not args.closed_loop) else 0)


def measure(svc: Serve, model: str, args: argparse.Namespace) -> tuple[int, int]:
    """The load on `lbdn serve`, its table, and the CPU its processes used."""
    asyncio.run(warm_up(svc.url, svc.key, model, processes=4 * args.processes))
    assert svc.proc is not None
    apis = api_processes(svc.proc.pid)
    pool = [p for api in apis for p in certify_processes(api)]
    cpu0, api0, pool0 = time.process_time(), sum(map(proc_cpu, apis)), sum(map(proc_cpu, pool))
    rec = asyncio.run(run_load(svc.url, svc.key, model, args))
    cpu_note = (
        f"CPU seconds used during the run: {len(apis)} API process(es) {sum(map(proc_cpu, apis)) - api0:.1f}, "
        f"their {len(pool)} certify processes {sum(map(proc_cpu, pool)) - pool0:.1f}, "
        f"this load generator {time.process_time() - cpu0:.1f}; load average {os.getloadavg()[0]:.1f}"
    )
    stack = "Redis + PostgreSQL" if args.stack else "embedded SQLite store + SQLite broker"
    polls = "closed loop" if args.closed_loop else f"every {args.poll_interval:g} s"
    title = (
        f"lbdn serve --api-processes {args.processes} ({stack}): {args.pollers} pollers {polls}, "
        f"{args.certifiers} certify clients (16 Toy inputs, closed loop), /healthz every 0.1 s"
    )
    errors, shed = report(rec, args.duration, title)
    print(cpu_note)
    print(server_side(svc.url))
    return errors, shed


if __name__ == "__main__":
    main()

"""The reads of bench/scale_sim.py: clients that poll jobs, list pages, read metrics and sweeps, through
the store functions the API's routes call or through the API, and EXPLAIN ANALYZE of each read."""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import os
import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event

from api.routers import jobs as job_routes
from api.routers.sweeps import _sweep_out  # imported before the clients fork: their threads share it
from core.settings import Settings
from core.store import jobs, make_engine, releasing_session_factory
from core.store import sweeps as sweep_store
from core.store.job_search import JobQuery

TENANT = "scale"
OPS = (("poll", 0.6), ("list first", 0.1), ("list deep", 0.1), ("metrics", 0.1), ("sweep", 0.1))


class StoreClient:
    """The reads of the API's routes, through the route functions themselves (what they query and
    how they build their answers), less HTTP: GET /v1/jobs/{id}, GET /v1/jobs, .../metrics and
    GET /v1/sweeps/{id}, each answer serialized to JSON as FastAPI would."""

    def __init__(self, sessions: Any) -> None:
        self.sessions = sessions

    def __call__(self, op: str, target: Any) -> None:
        with self.sessions() as s:
            if op == "poll":
                job_routes.get_job(self._job(s, target), s).model_dump_json()
            elif op.startswith("list"):
                cursor = None if target is None else str(target)
                job_routes.list_jobs(s, TENANT, JobQuery(), limit=50, cursor=cursor).model_dump_json()
            elif op == "metrics":
                job_routes.get_metrics(self._job(s, target), s, since_epoch=0, format="json").model_dump_json()
            else:
                sweep = sweep_store.get_sweep(s, TENANT, target)
                _sweep_out(s, sweep, with_jobs=True).model_dump_json()

    @staticmethod
    def _job(s: Any, job_id: str) -> Any:
        job = jobs.get_job(s, TENANT, job_id)  # api.deps.tenant_job's query
        if job is None:
            raise LookupError(job_id)
        return job


class HttpClient:
    """The same reads through the real API, on one kept-alive connection."""

    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {key}"}

    def __call__(self, op: str, target: Any) -> None:
        path = {"poll": f"/v1/jobs/{target}", "metrics": f"/v1/jobs/{target}/metrics", "sweep": f"/v1/sweeps/{target}"}
        url = path.get(op) or ("/v1/jobs?limit=50" + (f"&cursor={target}" if target else ""))
        self.conn.request("GET", url, headers=self.headers)
        r = self.conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status}")


def client_proc(
    settings: Settings, n: int, pool: int, via: Any, targets: dict[str, list[Any]], stop: Any, out: Any
) -> None:
    """`n` clients, each starting one read a second (a slow answer delays its next read)."""
    cpu0 = time.process_time()
    sessions = releasing_session_factory(make_engine(settings.db_url, pool_size=pool, max_overflow=0, pool_timeout=120))
    lat: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []

    def one(seed: int) -> None:
        rng = random.Random(seed)
        call = StoreClient(sessions) if via is None else HttpClient(*via)
        stop.wait(rng.uniform(0, 1))
        while not stop.is_set():
            op = rng.choices([o for o, _ in OPS], [w if targets[o] else 0 for o, w in OPS])[0]
            target = rng.choice(targets[op]) if targets[op] else None
            t0 = time.perf_counter()
            try:
                call(op, target)
            except Exception as e:
                errors.append(f"{op}: {type(e).__name__}: {e}"[:300])
            took = time.perf_counter() - t0
            lat[op].append(took)
            stop.wait(max(0.0, 1.0 - took))

    ts = [threading.Thread(target=one, args=(os.getpid() * 1000 + i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put((dict(lat), errors[:5], len(errors), time.process_time() - cpu0))


def targets_of(settings: Settings) -> dict[str, list[Any]]:
    """What the clients read: job ids, sweep ids, the first page (None) and deep cursors (oldest 10 %)."""
    engine = make_engine(settings.db_url)
    with engine.connect() as c:
        ids = [r[0] for r in c.exec_driver_sql("SELECT id FROM lbdn_jobs ORDER BY random() LIMIT 20000")]
        swp = [r[0] for r in c.exec_driver_sql("SELECT id FROM lbdn_sweeps ORDER BY random() LIMIT 2000")]
        lo, hi = c.exec_driver_sql("SELECT min(pk), max(pk) FROM lbdn_jobs").one()
    engine.dispose()
    deep = list(range(lo, lo + max(2, (hi - lo) // 10)))
    return {"poll": ids, "metrics": ids, "sweep": swp, "list first": [None], "list deep": deep}


def start_clients(settings: Settings, args: argparse.Namespace, via: Any, stop: Any) -> tuple[list[Any], Any]:
    ctx, out = mp.get_context("fork"), mp.get_context("fork").Queue()
    targets = targets_of(settings)
    per = [args.clients // args.client_procs + (i < args.clients % args.client_procs) for i in range(args.client_procs)]
    procs = [ctx.Process(target=client_proc, args=(settings, n, args.pool, via, targets, stop, out)) for n in per]
    for p in procs:
        p.start()
    return procs, out


@dataclass
class Reads:
    """What the clients of one phase saw: latencies per read (s), errors, and their processes' CPU."""

    lat: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    samples: list[str] = field(default_factory=list)
    errors: int = 0
    cpu_s: float = 0.0

    @property
    def cpu_per_read_ms(self) -> float:
        """The clients' CPU per read: the route code's cost on this machine, whatever its load."""
        n = sum(len(xs) for xs in self.lat.values())
        return 1000 * self.cpu_s / n if n else float("nan")


def gather_clients(procs: list[Any], out: Any) -> Reads:
    reads = Reads()
    for _ in procs:
        got, sample, n, cpu = out.get(timeout=300)
        for k, v in got.items():
            reads.lat[k] += v
        reads.samples += sample
        reads.errors += n
        reads.cpu_s += cpu
    for p in procs:
        p.join()
    return reads


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return 1000 * xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def print_reads(title: str, reads: Reads, seconds: float) -> None:
    print(f"-- {title}; load average {os.getloadavg()[0]:.1f}")
    print(f"   {'read':12s} {'count':>7s} {'req/s':>6s} {'p50 ms':>7s} {'p99 ms':>7s} {'max ms':>7s}")
    for op, _ in OPS:
        xs = reads.lat.get(op, [])
        print(
            f"   {op:12s} {len(xs):7d} {len(xs) / seconds:6.1f} {pct(xs, 0.5):7.1f} {pct(xs, 0.99):7.1f} {pct(xs, 1):7.1f}"
        )
    print(f"   clients' CPU per read {reads.cpu_per_read_ms:.2f} ms (their processes' CPU time / reads)")
    print(f"   errors: {reads.errors}" + "".join(f"\n     {s}" for s in reads.samples))


def explain_reads(settings: Settings, targets: dict[str, list[Any]]) -> None:
    """PostgreSQL's own time for each read's statements (EXPLAIN ANALYZE of exactly what the store
    functions send), and the plan's scans: what the tables cost apart from this machine's CPU load."""
    engine = make_engine(settings.db_url)
    sent: list[tuple[str, Any]] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _k, stmt, params, *_: sent.append((stmt, params)))
    client = StoreClient(releasing_session_factory(engine))
    extra = {"list running": lambda s: jobs.list_jobs(s, TENANT, status="running", limit=50)}
    print("   PostgreSQL execution time of each read (EXPLAIN ANALYZE, warm cache):")
    for op in [o for o, _ in OPS if targets[o]] + list(extra):
        sent.clear()
        if op in extra:
            with client.sessions() as s:
                extra[op](s)
        else:
            client(op, targets[op][0] if op != "list deep" else targets[op][len(targets[op]) // 2])
        total, scans = 0.0, []
        with engine.connect() as c:
            for stmt, params in [x for x in sent if x[0].lstrip().upper().startswith("SELECT")]:
                plan = c.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + stmt, params).scalar_one()[0]
                total += plan["Execution Time"]
                scans += _scans(plan["Plan"])
        print(f"     {op:12s} {total:7.2f} ms  {', '.join(dict.fromkeys(scans))}")
    engine.dispose()


def _scans(node: dict[str, Any]) -> list[str]:
    here = (
        [f"{node['Node Type']} {node.get('Index Name') or node.get('Relation Name')}"]
        if "Scan" in node["Node Type"]
        else []
    )
    return here + [s for child in node.get("Plans", []) for s in _scans(child)]

"""The job store, broker and reaper at scale (issue 19 item 3), on PostgreSQL and Redis, no training.

    python bench/scale_sim.py                                 # full size (see the README, "At scale")
    python bench/scale_sim.py --jobs 500 --workers 10 --finished 5000 --metric-rows 50000   # < 1 min

Phase 1 (drain): --jobs training jobs (in sweeps of --sweep-size) are made with the store's code and
sent with CeleryQueue (Redis db --redis-db, queue names of this run). --workers simulated workers,
threads spread over --procs forked processes, take the broker's messages and run each job through
the worker's own code (worker.tasks.run_job: lease, heartbeat thread, progress, one metrics row per
epoch for --epochs epochs, finish, sweep advance) with a body that trains nothing. Meanwhile the
reaper's pass (core.reaper.reap_and_resend) runs every 2 s, and --clients clients each ask once a
second for one of: a job (poll), the first or a deep page of the job list, a job's metrics, a sweep.
Phase 2: the tables are filled up by COPY to --finished finished jobs and --metric-rows metric rows;
the clients run alone for --duration s; then the reaper passes over 10,000 running jobs (leases
live, then all expired: the 10,000 are re-queued). It prints claims/s, reaper pass times, p50/p99
per read, and the checks (0 jobs lost, 0 claimed twice).

Clients call the store functions the API's routes call (--via store, the default: the API process
itself is the bottleneck on 2 cores, see the README) or the real API (--via api: `lbdn api` on a free
port, stdlib HTTP clients). Each simulated process gets a pool of --pool connections, so the run
stays within PostgreSQL's max_connections beside other users of the server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.service import PgDatabase, free_port  # noqa: E402
from core.reaper import reap_and_resend  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.states import JobKind, JobState  # noqa: E402
from core.store import (  # noqa: E402
    init_db,
    jobs,
    keys,
    make_engine,
    releasing_session_factory,
    session_factory,
    transaction,
)
from core.store import sweeps as sweep_store  # noqa: E402
from worker.context import TaskContext  # noqa: E402

TENANT = "scale"
SPEC = {"model": "Toy", "layer": "Sandwich", "gamma": 1.0, "epochs": 100, "dataset": "square_wave"}
OPS = (("poll", 0.6), ("list first", 0.1), ("list deep", 0.1), ("metrics", 0.1), ("sweep", 0.1))


class PooledContext(TaskContext):
    """The worker's TaskContext with a bounded pool (threads of one process share --pool connections)."""

    def __init__(self, settings: Settings, pool: int) -> None:
        super().__init__(settings)
        self.pool = pool

    @property
    def engine(self) -> Any:
        if self._pid != os.getpid() or self._engine is None:
            self._engine = make_engine(self.settings.db_url, pool_size=self.pool, max_overflow=0, pool_timeout=120)
            self._sessions = session_factory(self._engine)
            self._pid = os.getpid()
        return self._engine


# ---- phase 1: jobs, workers ------------------------------------------------------------------
def make_jobs(settings: Settings, n: int, sweep_size: int) -> None:
    """n queued training jobs in sweeps of sweep_size, each sent to the broker as the API sends it."""
    from core.queue import CeleryQueue

    engine = make_engine(settings.db_url)
    queue = CeleryQueue(settings)
    for start in range(0, n, sweep_size):
        size = min(sweep_size, n - start)
        with transaction(session_factory(engine)) as s:
            _, made = sweep_store.create_sweep(
                s, tenant=TENANT, name=f"sweep {start}", preset=None, request={}, evaluate=None,
                specs=[(SPEC, {"seed": i}) for i in range(size)],
            )  # fmt: skip
        for job in made:
            queue.enqueue(job.id, JobKind.train)
    queue.close()
    engine.dispose()


def fake_body(epochs: int) -> Any:
    """A job body that reports `epochs` epochs of metrics as training would, and trains nothing."""

    def body(context: Any, job: Any, reporter: Any) -> tuple[JobState, dict[str, Any]]:
        for e in range(1, epochs + 1):
            if reporter.should_stop():
                return JobState.cancelled, {}
            p = SimpleNamespace(epoch=e, epochs=epochs, step=1, steps=1, global_step=e, total_steps=epochs,
                                eta_s=0.0, loss=1.0 / e, lr=1e-3)  # fmt: skip
            reporter.progress(p)
            reporter.epoch({"epoch": e, "loss": 1.0 / e, "acc": 1 - 1.0 / (e + 1), "time_s": 0.01})
        return JobState.succeeded, {"result": {"loss": 1.0 / epochs, "classes": None}}

    return body


def worker_proc(settings: Settings, threads: int, pool: int, epochs: int, stop: Any, out: Any) -> None:
    """`threads` simulated workers in this process: take a message, run its job, ack it."""
    from queue import Empty

    from core.queue import make_celery
    from worker.tasks import run_job

    context = PooledContext(settings, pool)
    results: dict[str, int] = defaultdict(int)
    body = fake_body(epochs)

    def one() -> None:
        app = make_celery(settings)
        with app.connection_for_read() as conn:
            q = conn.SimpleQueue(app.amqp.queues[settings.gpu_queue])
            while not stop.is_set():
                try:
                    msg = q.get(timeout=1)
                except Empty:
                    continue
                results[run_job(context, msg.payload[0][0], body)] += 1
                msg.ack()
            q.close()

    ts = [threading.Thread(target=one, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put(dict(results))


def reaper_loop(settings: Settings, stop: Any, passes: list[float]) -> None:
    """The worker's periodic reaper pass, timed, every 2 s until `stop`."""
    from core.queue import CeleryQueue
    from core.sweep_submit import advance_sweeps

    context, queue = PooledContext(settings, 2), CeleryQueue(settings)
    while not stop.wait(2.0):
        t0 = time.perf_counter()
        reap_and_resend(context.sessions(), queue, settings)
        advance_sweeps(context.sessions(), queue, settings)
        passes.append(time.perf_counter() - t0)
    queue.close()


# ---- clients ---------------------------------------------------------------------------------
class StoreClient:
    """The reads of the API's routes, through the store functions they call (and their answers)."""

    def __init__(self, sessions: Any) -> None:
        self.sessions = sessions

    def __call__(self, op: str, target: Any) -> None:
        from api.routers.sweeps import _sweep_out
        from api.views import job_out

        with self.sessions() as s:
            if op == "poll":
                job_out(jobs.get_job(s, TENANT, target))
            elif op.startswith("list"):
                [job_out(j) for j in jobs.list_jobs(s, TENANT, limit=50, before_pk=target)]
            elif op == "metrics":
                jobs.metrics_since(s, target)
            else:
                _sweep_out(s, sweep_store.get_sweep(s, TENANT, target), with_jobs=True).model_dump_json()


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
    sessions = releasing_session_factory(make_engine(settings.db_url, pool_size=pool, max_overflow=0, pool_timeout=120))
    lat: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []

    def one(seed: int) -> None:
        rng = random.Random(seed)
        call = StoreClient(sessions) if via is None else HttpClient(*via)
        stop.wait(rng.uniform(0, 1))
        while not stop.is_set():
            op = rng.choices([o for o, _ in OPS], [w for _, w in OPS])[0]
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
    out.put((dict(lat), errors[:5], len(errors)))


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


def gather_clients(procs: list[Any], out: Any) -> tuple[dict[str, list[float]], list[str], int]:
    lat: dict[str, list[float]] = defaultdict(list)
    samples, errors = [], 0
    for _ in procs:
        got, sample, n = out.get(timeout=300)
        for k, v in got.items():
            lat[k] += v
        samples += sample
        errors += n
    for p in procs:
        p.join()
    return lat, samples, errors


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return 1000 * xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def print_reads(title: str, lat: dict[str, list[float]], samples: list[str], errors: int, seconds: float) -> None:
    print(f"-- {title}")
    print(f"   {'read':12s} {'count':>7s} {'req/s':>6s} {'p50 ms':>7s} {'p99 ms':>7s} {'max ms':>7s}")
    for op, _ in OPS:
        xs = lat.get(op, [])
        print(
            f"   {op:12s} {len(xs):7d} {len(xs) / seconds:6.1f} {pct(xs, 0.5):7.1f} {pct(xs, 0.99):7.1f} {pct(xs, 1):7.1f}"
        )
    print(f"   errors: {errors}" + "".join(f"\n     {s}" for s in samples))


# ---- phase 2: bulk load, reaper at 10,000 running ------------------------------------------------
def bulk_load(settings: Settings, finished: int, metric_rows: int) -> None:
    """COPY finished jobs and metric rows until the tables hold `finished` jobs and `metric_rows` rows."""
    import psycopg

    url = settings.db_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as c:
        have_jobs = c.execute("SELECT count(*) FROM lbdn_jobs").fetchone()[0]
        have_rows = c.execute("SELECT count(*) FROM lbdn_job_metrics").fetchone()[0]
        add, rows = max(0, finished - have_jobs), max(0, metric_rows - have_rows)
        if not add:
            return
        run = os.urandom(3).hex()
        ids = [f"job_bulk{run}{i:09d}" for i in range(add)]
        spec, result = json.dumps(SPEC), json.dumps({"loss": 0.1})
        cols = "id, tenant, kind, status, spec, created_at, updated_at, started_at, finished_at, result, cancel_requested, attempt, event_seq"
        with c.cursor().copy(f"COPY lbdn_jobs ({cols}) FROM STDIN") as cp:
            for i in ids:
                cp.write_row((i, TENANT, "train", "succeeded", spec, "now", "now", "now", "now", result, False, 1, 0))
        per, extra = divmod(rows, add)
        with c.cursor().copy("COPY lbdn_job_metrics (job_id, epoch, data) FROM STDIN") as cp:
            for n, i in enumerate(ids):
                for e in range(1, per + (n < extra) + 1):
                    cp.write_row((i, e, f'{{"epoch": {e}, "loss": 0.1, "acc": 0.9}}'))
        c.execute("ANALYZE")


def time_reaper_at(settings: Settings, n: int) -> tuple[float, float, int]:
    """Seconds of one reaper pass over `n` running jobs with live leases, then with all expired."""
    from core.queue import CeleryQueue

    engine = make_engine(settings.db_url)
    sessions, queue = session_factory(engine), CeleryQueue(settings)
    ahead = f"now() + interval '{int(settings.lease_s)} seconds'"
    with engine.begin() as c:
        c.exec_driver_sql(
            "UPDATE lbdn_jobs SET status='running', lease_owner='gone', lease_expires_at=" + ahead
            + " WHERE pk IN (SELECT pk FROM lbdn_jobs ORDER BY pk DESC LIMIT %(n)s)", {"n": n}
        )  # fmt: skip
        c.exec_driver_sql("ANALYZE lbdn_jobs")
    times = []
    for expire in (False, True):
        if expire:
            with engine.begin() as c:
                c.exec_driver_sql(
                    "UPDATE lbdn_jobs SET lease_expires_at = now() - interval '1 s' WHERE status='running'"
                )
        t0 = time.perf_counter()
        sent = reap_and_resend(sessions, queue, settings)
        times.append(time.perf_counter() - t0)
    with engine.begin() as c:
        c.exec_driver_sql(
            "UPDATE lbdn_jobs SET status='succeeded', enqueued_at=NULL WHERE status IN ('queued', 'running')"
        )
    queue.app.connection_for_write().default_channel.client.delete(settings.gpu_queue)
    queue.close()
    engine.dispose()
    return times[0], times[1], len(sent)


# ---- the run -------------------------------------------------------------------------------------
def start_api(settings: Settings) -> tuple[subprocess.Popen[bytes], tuple[int, str]]:
    """`lbdn api` on this run's store and broker, with a key of TENANT; waits until it answers."""
    with transaction(session_factory(make_engine(settings.db_url))) as s:
        _, secret = keys.create_key(s, TENANT)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LBDN_")}
    env.update(LBDN_DATABASE_URL=settings.db_url, LBDN_BROKER_URL=str(settings.broker_url), PYTHONPATH=str(ROOT),
               LBDN_HOME=str(settings.home), LBDN_QUEUE_PREFIX=settings.queue_prefix)  # fmt: skip
    log = open(Path(settings.home) / "api.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "api.cli", "api", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    for _ in range(600):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return proc, (port, secret)
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("lbdn api did not start")


def drain(settings: Settings, args: argparse.Namespace, via: Any) -> None:
    """Phase 1: the workers drain --jobs jobs while the reaper and the clients run."""
    ctx = mp.get_context("fork")
    t0 = time.perf_counter()
    make_jobs(settings, args.jobs, args.sweep_size)
    print(f"made and sent {args.jobs} jobs in {time.perf_counter() - t0:.1f} s")
    stop_clients, stop_workers, results = ctx.Event(), ctx.Event(), ctx.Queue()
    clients, client_out = start_clients(settings, args, via, stop_clients)
    per = [args.workers // args.procs + (i < args.workers % args.procs) for i in range(args.procs)]
    workers = [ctx.Process(target=worker_proc, args=(settings, n, args.pool, args.epochs, stop_workers, results))
               for n in per if n]  # fmt: skip
    passes: list[float] = []
    stop_reaper = threading.Event()
    reaper = threading.Thread(target=reaper_loop, args=(settings, stop_reaper, passes), daemon=True)
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    reaper.start()
    engine = make_engine(settings.db_url)
    while True:
        with engine.connect() as c:
            done = c.exec_driver_sql(
                "SELECT count(*) FROM lbdn_jobs WHERE status IN ('succeeded','failed','cancelled')"
            ).scalar_one()
        if done >= args.jobs or time.perf_counter() - t0 > args.max_drain_s:
            break
        time.sleep(1)
    took = time.perf_counter() - t0
    stop_workers.set()
    stop_clients.set()
    stop_reaper.set()
    outcome: dict[str, int] = defaultdict(int)
    for _ in workers:
        for k, v in results.get(timeout=300).items():
            outcome[k] += v
    for w in workers:
        w.join()
    reaper.join()
    lat, samples, errors = gather_clients(clients, client_out)
    with engine.connect() as c:
        states = dict(c.exec_driver_sql("SELECT status, count(*) FROM lbdn_jobs GROUP BY status").all())
        twice = c.exec_driver_sql("SELECT count(*) FROM lbdn_jobs WHERE attempt <> 1").scalar_one()
        starts = c.exec_driver_sql(
            "SELECT count(*) FROM lbdn_job_events WHERE kind='state' AND data->>'status'='running'"
        ).scalar_one()
        epochs = c.exec_driver_sql("SELECT count(*) FROM lbdn_job_metrics").scalar_one()
    engine.dispose()
    print(f"== phase 1: {args.workers} workers ({args.procs} processes) drained {done} of {args.jobs} jobs "
          f"x {args.epochs} epochs in {took:.1f} s, {args.clients} clients reading")  # fmt: skip
    print(f"   claims/s {starts / took:.1f}; metric rows/s {epochs / took:.0f}; job states {states}; "
          f"run_job answers {dict(outcome)}")  # fmt: skip
    print(f"   lost (not succeeded): {args.jobs - states.get('succeeded', 0)}; claimed twice: {twice} "
          f"(attempt <> 1), {starts - done} extra starts")  # fmt: skip
    print(f"   reaper passes: {len(passes)}, p50 {pct(passes, 0.5):.1f} ms, max {pct(passes, 1):.1f} ms")
    print_reads(f"reads during the drain (via {'store' if via is None else 'API'})", lat, samples, errors, took)


def at_rest(settings: Settings, args: argparse.Namespace, via: Any) -> None:
    """Phase 2: the clients and the reaper against --finished jobs and --metric-rows metric rows."""
    t0 = time.perf_counter()
    bulk_load(settings, args.finished, args.metric_rows)
    engine = make_engine(settings.db_url)
    with engine.connect() as c:
        njobs = c.exec_driver_sql("SELECT count(*) FROM lbdn_jobs").scalar_one()
        nrows = c.exec_driver_sql("SELECT count(*) FROM lbdn_job_metrics").scalar_one()
    engine.dispose()
    print(f"== phase 2: {njobs} jobs, {nrows} metric rows (bulk load {time.perf_counter() - t0:.1f} s)")
    stop = mp.get_context("fork").Event()
    clients, out = start_clients(settings, args, via, stop)
    time.sleep(args.duration)
    stop.set()
    lat, samples, errors = gather_clients(clients, out)
    print_reads(f"{args.clients} clients for {args.duration:.0f} s (via {'store' if via is None else 'API'})",
                lat, samples, errors, args.duration)  # fmt: skip
    live, expired, sent = time_reaper_at(settings, args.running)
    print(f"   reaper pass over {args.running} running jobs: leases live {1000 * live:.1f} ms; "
          f"all expired {1000 * expired:.1f} ms ({sent} re-queued)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=100)
    ap.add_argument("--procs", type=int, default=8, help="processes the workers are spread over")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--sweep-size", type=int, default=100)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--client-procs", type=int, default=4)
    ap.add_argument("--pool", type=int, default=4, help="DB connections of each process")
    ap.add_argument("--via", choices=["store", "api"], default="store")
    ap.add_argument("--finished", type=int, default=100_000)
    ap.add_argument("--metric-rows", type=int, default=1_000_000)
    ap.add_argument("--running", type=int, default=10_000, help="running jobs of the reaper measurement")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of phase 2's reads")
    ap.add_argument("--max-drain-s", type=float, default=900.0)
    ap.add_argument("--lease-s", type=float, default=6.0, help="lease; heartbeats every lease/3")
    ap.add_argument("--redis-db", type=int, default=11)
    ap.add_argument("--skip-drain", action="store_true")
    args = ap.parse_args()
    db = PgDatabase("lbdn_scale")
    prefix = f"scale{os.urandom(3).hex()}."
    settings = Settings(
        home=Path(tempfile.mkdtemp(prefix="lbdn-scale-")), database_url=db.url, queue_prefix=prefix,
        broker_url=f"redis://127.0.0.1:6379/{args.redis_db}", lease_s=args.lease_s, device="cpu",
        progress_interval_s=0.5, cancel_poll_s=0.5, resend_queued_after_s=600,
    )  # fmt: skip
    api = None
    try:
        init_db(make_engine(settings.db_url))
        via = None
        if args.via == "api":
            api, via = start_api(settings)
        if not args.skip_drain:
            drain(settings, args, via)
        at_rest(settings, args, via)
    finally:
        if api is not None:
            api.terminate()
            api.wait(30)
        db.drop()


if __name__ == "__main__":
    main()

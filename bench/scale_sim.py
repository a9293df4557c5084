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
per read, and the checks (0 jobs lost, 0 finished by two workers).

Clients call the store functions the API's routes call (--via store, the default: the API process
itself is the bottleneck on 2 cores, see the README) or the real API (--via api: `lbdn api` on a free
port, stdlib HTTP clients). Each simulated process gets a pool of --pool connections, so the run
stays within PostgreSQL's max_connections beside other users of the server.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import os
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
from bench.scale_bulk import SPEC, TENANT, bulk_load, time_reaper_at, time_scrape  # noqa: E402
from bench.scale_reads import explain_reads, gather_clients, pct, print_reads, start_clients, targets_of  # noqa: E402
from bench.scale_report import print_summary, read_stats  # noqa: E402
from bench.service import PgDatabase, free_port  # noqa: E402
from core.reaper import reap_and_resend  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.states import JobKind, JobState  # noqa: E402
from core.store import (  # noqa: E402
    init_db,
    jobs,
    keys,
    make_engine,
    session_factory,
    transaction,
)
from core.store import sweeps as sweep_store  # noqa: E402
from worker.context import TaskContext  # noqa: E402


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
    made: list[Any] = []
    for start in range(0, n, sweep_size):
        size = min(sweep_size, n - start)
        with transaction(session_factory(engine)) as s:
            # straight into the store (not core.submit): the tenant quota would refuse a bulk sweep
            group = [jobs.create_job(s, tenant=TENANT, kind=JobKind.train, spec=SPEC)[0] for _ in range(size)]
            sweep_store.create_sweep(
                s, tenant=TENANT, name=f"sweep {start}", preset=None, request={}, evaluate=None,
                trained=[(job, {"seed": i}) for i, job in enumerate(group)],
            )  # fmt: skip
        made += [job.id for job in group]
    with queue.batch() as enqueue:
        for job_id in made:
            enqueue(job_id, JobKind.train)
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
    context.sessions()  # the engine, made once before the threads share it
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


def drain(settings: Settings, args: argparse.Namespace, via: Any) -> dict[str, float]:
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
    done = wait_drained(settings, args, t0)
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
    reads = gather_clients(clients, client_out)
    got = drain_counts(settings, args, done, took, outcome, passes)
    print_reads(f"reads during the drain (via {'store' if via is None else 'API'})", reads, took)
    return {**got, **read_stats("drain", reads.lat), "drain errors": reads.errors}


def wait_drained(settings: Settings, args: argparse.Namespace, t0: float) -> int:
    """Wait until every job is finished (or --max-drain-s passed); returns how many are."""
    engine = make_engine(settings.db_url)
    while True:
        with engine.connect() as c:
            done: int = c.exec_driver_sql(
                "SELECT count(*) FROM lbdn_jobs WHERE status IN ('succeeded','failed','cancelled')"
            ).scalar_one()
        if done >= args.jobs or time.perf_counter() - t0 > args.max_drain_s:
            engine.dispose()
            return done
        time.sleep(1)


# jobs with more than one final state event: two workers' results (a lease makes it impossible)
FINISHED_TWICE = """SELECT count(*) FROM (SELECT job_id FROM lbdn_job_events WHERE kind = 'state'
    AND data->>'status' IN ('succeeded', 'failed', 'cancelled') GROUP BY job_id HAVING count(*) > 1) AS twice"""


def drain_counts(
    settings: Settings, args: argparse.Namespace, done: int, took: float, outcome: dict[str, int], passes: list[float]
) -> dict[str, float]:
    """The store's account of the drain: states, attempts, starts and metric rows; printed and returned."""
    engine = make_engine(settings.db_url)
    with engine.connect() as c:
        states = dict(c.exec_driver_sql("SELECT status, count(*) FROM lbdn_jobs GROUP BY status").all())
        again = c.exec_driver_sql("SELECT count(*) FROM lbdn_jobs WHERE attempt <> 1").scalar_one()
        twice = c.exec_driver_sql(FINISHED_TWICE).scalar_one()
        starts = c.exec_driver_sql(
            "SELECT count(*) FROM lbdn_job_events WHERE kind='state' AND data->>'status'='running'"
        ).scalar_one()
        started = c.exec_driver_sql("SELECT count(*) FROM lbdn_jobs WHERE status <> 'queued'").scalar_one()
        epochs = c.exec_driver_sql("SELECT count(*) FROM lbdn_job_metrics").scalar_one()
    engine.dispose()
    # still queued or running when --max-drain-s stopped the drain: unfinished, not lost
    unfinished = states.get("queued", 0) + states.get("running", 0)
    lost = args.jobs - states.get("succeeded", 0) - unfinished
    print(f"== phase 1: {args.workers} workers ({args.procs} processes) drained {done} of {args.jobs} jobs "
          f"x {args.epochs} epochs in {took:.1f} s, {args.clients} clients reading")  # fmt: skip
    print(f"   claims/s {starts / took:.1f}; metric rows/s {epochs / took:.0f}; job states {states}; "
          f"run_job answers {dict(outcome)}")  # fmt: skip
    print(f"   lost (failed, cancelled or gone): {lost}; unfinished: {unfinished}; finished by two workers: {twice}; taken over after a lost lease: "
          f"{again} (attempt <> 1), {starts - started} extra starts")  # fmt: skip
    print(f"   reaper passes: {len(passes)}, p50 {pct(passes, 0.5):.1f} ms, max {pct(passes, 1):.1f} ms")
    counts = {"lost": lost, "unfinished": unfinished, "twice": twice, "again": again}
    return {**counts, "claims/s": starts / took, "rows/s": epochs / took}


def at_rest(settings: Settings, args: argparse.Namespace, via: Any) -> dict[str, float]:
    """Phase 2: the clients and the reaper against --finished jobs and --metric-rows metric rows."""
    t0 = time.perf_counter()
    bulk_load(settings, args.finished, args.metric_rows, args.sweep_size)
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
    reads = gather_clients(clients, out)
    print_reads(f"{args.clients} clients for {args.duration:.0f} s (via {'store' if via is None else 'API'})",
                reads, args.duration)  # fmt: skip
    explain_reads(settings, targets_of(settings))
    live, expired, sending, sent = time_reaper_at(settings, args.running)
    print(f"   reaper pass over {args.running} running jobs: leases live {1000 * live:.1f} ms; all expired "
          f"{1000 * expired:.0f} ms ({sent} re-queued; store {1000 * (expired - sending):.0f} ms, "
          f"sending {1000 * sending:.0f} ms)")  # fmt: skip
    reaper = {"reaper live": 1000 * live, "reaper expired": 1000 * expired, "reaper sending": 1000 * sending}
    reaper["scrape"] = 1000 * time_scrape(settings)
    print(f"   /metrics scrape, its job-store part, {njobs} jobs: {reaper['scrape']:.1f} ms (median of 5)")
    sizes = {"jobs": njobs, "rows": nrows, "running": args.running}
    got = {**read_stats("rest", reads.lat), "rest errors": reads.errors, "rest cpu/read": reads.cpu_per_read_ms}
    return {**got, **reaper, **sizes}


def forget_queues(settings: Settings) -> None:
    """Remove this run's Redis keys (its queues, kombu's bindings of them, the broker marker)."""
    import redis

    client = redis.Redis.from_url(str(settings.broker_url))
    for key in client.scan_iter(match=f"*{settings.queue_prefix}*"):
        client.delete(key)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2_000, help="jobs of the drain (issue 19: 10,000; see the README)")
    ap.add_argument("--workers", type=int, default=100)
    ap.add_argument("--procs", type=int, default=8, help="processes the workers are spread over")
    ap.add_argument("--epochs", type=int, default=5, help="epochs of each drained job (issue 19: 100)")
    ap.add_argument("--sweep-size", type=int, default=100)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--client-procs", type=int, default=4, help="processes the clients are spread over")
    ap.add_argument("--pool", type=int, default=4, help="DB connections of each process")
    ap.add_argument("--via", choices=["store", "api"], default="store")
    ap.add_argument("--finished", type=int, default=100_000)
    ap.add_argument("--metric-rows", type=int, default=1_000_000)
    ap.add_argument("--running", type=int, default=10_000, help="running jobs of the reaper measurement")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of phase 2's reads")
    ap.add_argument("--max-drain-s", type=float, default=300.0, help="the drain stops here (its jobs count lost)")
    ap.add_argument("--lease-s", type=float, default=30.0, help="lease; heartbeats every lease/3")
    ap.add_argument("--redis-db", type=int, default=11)
    ap.add_argument("--skip-drain", action="store_true")
    return ap.parse_args()


def main() -> None:
    args, t0 = parse_args(), time.perf_counter()
    db = PgDatabase("lbdn_scale")
    prefix = f"scale{os.urandom(3).hex()}."
    settings = Settings(
        home=Path(tempfile.mkdtemp(prefix="lbdn-scale-")), database_url=db.url, queue_prefix=prefix,
        broker_url=f"redis://127.0.0.1:6379/{args.redis_db}", lease_s=args.lease_s, device="cpu",
        progress_interval_s=0.5, cancel_poll_s=0.5, resend_queued_after_s=600,
    )  # fmt: skip
    api, got = None, {}
    try:
        init_db(make_engine(settings.db_url))
        via = None
        if args.via == "api":
            api, via = start_api(settings)
        if not args.skip_drain:
            got.update(drain(settings, args, via))
        got.update(at_rest(settings, args, via))
    finally:
        if api is not None:
            api.terminate()
            api.wait(30)
        db.drop()
        forget_queues(settings)
    got["run s"] = time.perf_counter() - t0
    got["errors"] = got.get("drain errors", 0) + got.get("rest errors", 0)
    print_summary(got, os.getloadavg())


if __name__ == "__main__":
    main()

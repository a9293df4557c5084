"""Phase 2 of bench/scale_sim.py: the tables filled up by COPY, and the reaper over 10,000 running jobs."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from core.reaper import reap_and_resend
from core.settings import Settings
from core.states import JobKind
from core.store import make_engine, session_factory

TENANT = "scale"
SPEC = {"model": "Toy", "layer": "Sandwich", "gamma": 1.0, "epochs": 100, "dataset": "square_wave"}


def bulk_load(settings: Settings, finished: int, metric_rows: int, sweep_size: int) -> None:
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
        bulk_sweeps(c, ids, sweep_size)
        c.execute("ANALYZE")


def bulk_sweeps(c: Any, ids: list[str], size: int) -> None:
    """The bulk-loaded jobs in sweeps of `size` (a sweep read lists all of its jobs)."""
    groups = [ids[i : i + size] for i in range(0, len(ids), size)]
    names = [f"swp_bulk{os.urandom(6).hex()}" for _ in groups]
    with c.cursor().copy("COPY lbdn_sweeps (id, tenant, name, request, created_at) FROM STDIN") as cp:
        for name in names:
            cp.write_row((name, TENANT, name, "{}", "now"))
    with c.cursor().copy("COPY lbdn_sweep_jobs (sweep_id, job_id, role, position, point) FROM STDIN") as cp:
        for name, group in zip(names, groups, strict=True):
            for pos, job_id in enumerate(group):
                cp.write_row((name, job_id, "train", pos, f'{{"seed": {pos}}}'))


class TimedQueue:
    """CeleryQueue, counting the seconds spent sending (`sending`): the reaper sends its messages
    in one batch (CeleryQueue.batch), timed from taking the producer to giving it back."""

    def __init__(self, settings: Settings) -> None:
        from core.queue import CeleryQueue

        self.queue, self.sending = CeleryQueue(settings), 0.0
        self.app, self.close, self.enqueue = self.queue.app, self.queue.close, self.queue.enqueue

    @contextmanager
    def batch(self) -> Iterator[Callable[[str, JobKind], None]]:
        t0 = time.perf_counter()
        try:
            with self.queue.batch() as enqueue:
                yield enqueue
        finally:
            self.sending += time.perf_counter() - t0


def time_reaper_at(settings: Settings, n: int) -> tuple[float, float, float, int]:
    """Seconds of one reaper pass over `n` running jobs with live leases, then with all expired
    (and of that, the seconds spent sending the re-queued jobs' messages)."""
    engine = make_engine(settings.db_url)
    sessions, queue = session_factory(engine), TimedQueue(settings)
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
        queue.sending = 0.0
        t0 = time.perf_counter()
        sent = reap_and_resend(sessions, queue, settings)
        times.append(time.perf_counter() - t0)
    times.append(queue.sending)
    with engine.begin() as c:
        c.exec_driver_sql(
            "UPDATE lbdn_jobs SET status='succeeded', enqueued_at=NULL WHERE status IN ('queued', 'running')"
        )
    queue.app.connection_for_write().default_channel.client.delete(settings.gpu_queue)
    queue.close()
    engine.dispose()
    return times[0], times[1], times[2], len(sent)


def time_scrape(settings: Settings, repeats: int = 5) -> float:
    """Median seconds of the job-store part of one /metrics scrape (api.metrics.JobsCollector: jobs
    by state and the run-time histogram), which every API replica answers from the whole table."""
    from api.metrics import JobsCollector

    engine = make_engine(settings.db_url)
    collector = JobsCollector(session_factory(engine))
    list(collector.collect())  # a first scrape warms the connection and the statement cache
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        list(collector.collect())
        times.append(time.perf_counter() - t0)
    engine.dispose()
    return sorted(times)[len(times) // 2]

"""Fault drill (not part of `make test`): jobs survive killed workers, a restarted broker and API.

    python bench/fault_drill.py             # embedded defaults (SQLite store + SQLite broker)
    python bench/fault_drill.py --stack     # its own redis-server + its own PostgreSQL database

Against a real `lbdn serve` (API + one worker, which `lbdn serve` starts again when it dies), it
submits --jobs Toy training jobs, then, while they run:
- kills the worker with SIGKILL (its whole process group: main process and pool child, like a lost
  machine) --kills times, each at a random moment 1-6 s after the worker has made progress again;
- with --stack, restarts Redis once (a redis-server of its own on a free port, no persistence: the
  queued messages are lost; the machine's shared Redis is never touched);
- restarts the API once (SIGTERM to `lbdn serve`, then a new `lbdn serve` on the same store);
and waits for every job to end. It reports, from the job store:
- jobs lost: jobs that did not succeed (failed, cancelled, or never finished);
- jobs run twice: jobs with two live leases at once (a `running` state event while another
  attempt was still running, with no re-queue in between) or more than one final state;
- epochs repeated: per-epoch metrics recorded more than once (an epoch re-run after a kill between
  its checkpoint and its metrics), and training steps re-run (done after the last checkpoint
  before a kill, so lost and done again after the resume);
- time to recover: from each fault to the next training progress written by a new attempt (after
  the Redis restart: the next progress at all, as the running job may carry on).
Settings of the drill: LBDN_LEASE_S=5 (a killed worker's job is re-queued 5 s after it died),
LBDN_REAP_INTERVAL_S=1, LBDN_MAX_ATTEMPTS=15 (one job may be hit by several of the 10 kills).
"""

from __future__ import annotations

import argparse
import math
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.service import PgDatabase, Serve, free_port
from core.store import Job, JobEvent, make_engine, session_factory

RESUMED = re.compile(r"Resumed from checkpoint: (\d+) epochs and (\d+) steps done")
DRILL_SETTINGS = {
    "lease_s": "5",
    "reap_interval_s": "1",
    "max_attempts": "15",
    "resend_queued_after_s": "60",
    "progress_interval_s": "0.3",
}


class RedisServer:
    """A redis-server of the drill's own (never the machine's shared one on :6379)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=1).ping()
                return
            except redis.RedisError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


class Drill:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.redis = RedisServer() if args.stack else None
        self.db = PgDatabase("lbdn_drill") if args.stack else None
        self.svc = Serve(
            broker_url=self.redis.url if self.redis else None,
            database_url=self.db.url if self.db else None,
            **DRILL_SETTINGS,
        )
        self.engine = make_engine(
            self.svc.env.get("LBDN_DATABASE_URL") or f"sqlite:///{self.svc.home / 'var' / 'lbdn.sqlite'}"
        )
        self.sessions = session_factory(self.engine)
        self.recoveries: list[tuple[str, float]] = []
        self.job_ids: list[str] = []

    # ---- reading the store -----------------------------------------------------------------
    def jobs(self) -> list[Job]:
        with self.sessions() as s:
            return list(s.query(Job).filter(Job.id.in_(self.job_ids)))

    def last_progress(self) -> tuple[int, float]:
        """(count of progress events of all jobs, wall time now): progress advances when it grows."""
        with self.sessions() as s:
            n = s.query(JobEvent).filter(JobEvent.job_id.in_(self.job_ids), JobEvent.kind == "progress").count()
        return n, time.monotonic()

    def wait_progress(self, after: int, bound: float = 600.0) -> float:
        """Wait until a new progress event is written after `after` were seen; returns when."""
        end = time.monotonic() + bound
        while time.monotonic() < end:
            n, now = self.last_progress()
            if n > after or self.all_done():
                return now
            time.sleep(0.2)
        raise RuntimeError(f"no training progress for {bound:.0f} s:\n{self.svc.log.read_text()[-3000:]}")

    def wait_new_attempt_progress(self, fault: str, t_fault: float, bound: float = 600.0) -> None:
        """Recovery: the next progress event written by a running attempt after the fault."""
        with self.sessions() as s:
            base = s.query(JobEvent).filter(JobEvent.job_id.in_(self.job_ids), JobEvent.kind == "state").count()
        end = time.monotonic() + bound
        while time.monotonic() < end:
            if self.all_done():
                break
            with self.sessions() as s:
                states = (
                    s.query(JobEvent)
                    .filter(JobEvent.job_id.in_(self.job_ids), JobEvent.kind == "state")
                    .order_by(JobEvent.id)
                    .all()
                )
                running = [e for e in states[base:] if e.data.get("status") == "running" and "attempt" in e.data]
                if running:
                    first = running[0]
                    progressed = (
                        s.query(JobEvent)
                        .filter(JobEvent.job_id == first.job_id, JobEvent.kind == "progress", JobEvent.seq > first.seq)
                        .count()
                    )
                    if progressed:
                        self.recoveries.append((fault, time.monotonic() - t_fault))
                        return
            time.sleep(0.2)
        self.recoveries.append((fault, float("nan")))

    def all_done(self) -> bool:
        return all(j.status in ("succeeded", "failed", "cancelled") for j in self.jobs())

    # ---- faults ----------------------------------------------------------------------------
    def kill_worker(self) -> None:
        import os

        pid = self.svc.current_worker_pid()
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def run(self) -> dict:
        a = self.args
        spec = {"model": "Toy", "layer": "Sandwich", "gamma": 1.0, "epochs": a.epochs}
        for i in range(a.jobs):
            r = httpx.post(
                f"{self.svc.url}/v1/jobs",
                headers=self.svc.headers,
                json={"kind": "train", "spec": {**spec, "seed": i}},
                timeout=60,
            )
            r.raise_for_status()
            self.job_ids.append(r.json()["id"])
        faults = ["kill"] * a.kills + ["api"] + (["redis"] if a.stack else [])
        # the API and Redis restarts at random places among the kills (never first: jobs run first)
        order = faults[:1] + self.rng.sample(faults[1:], len(faults) - 1)
        t_start = time.monotonic()
        for fault in order:
            if self.all_done():
                print(f"all jobs ended before the fault {fault!r}; stopping the faults early")
                break
            seen, _ = self.last_progress()
            self.wait_progress(seen)  # the worker is training
            time.sleep(self.rng.uniform(1, 6))
            t_fault = time.monotonic()
            if fault == "kill":
                self.kill_worker()
            elif fault == "api":
                self.svc.stop(signal.SIGTERM)
                self.svc.start()
            else:
                assert self.redis is not None
                self.redis.stop()
                self.redis.start()
            print(f"  {time.monotonic() - t_start:6.1f} s  fault: {fault}", flush=True)
            if fault == "redis":  # the running job may carry on: recovery is the next progress at all
                n, _ = self.last_progress()
                self.recoveries.append((fault, self.wait_progress(n) - t_fault))
            else:
                self.wait_new_attempt_progress(fault, t_fault)
        end = time.monotonic() + a.timeout
        while not self.all_done() and time.monotonic() < end:
            time.sleep(1)
        return self.report(time.monotonic() - t_start)

    def report(self, took: float) -> dict:
        jobs = self.jobs()
        lost = [j.id for j in jobs if j.status != "succeeded"]
        twice, epochs_repeated, attempts, steps_rerun, resumes = [], 0, 0, 0, 0
        with self.sessions() as s:
            for j in jobs:
                events = s.query(JobEvent).filter(JobEvent.job_id == j.id).order_by(JobEvent.seq).all()
                live = False
                finals = 0
                for e in events:
                    if e.kind != "state":
                        continue
                    st = e.data.get("status")
                    if st == "running" and "attempt" in e.data:
                        if live:
                            twice.append(j.id)
                        live = True
                    elif st in ("queued", "succeeded", "failed", "cancelled"):
                        live = False
                        finals += st != "queued"
                if finals > 1:
                    twice.append(j.id)
                # work re-run: from the last progress seen before a resume back to the checkpoint
                last = None
                for e in events:
                    if e.kind == "progress":
                        last = e.data
                    m = RESUMED.match(e.data.get("line", "")) if e.kind == "log" else None
                    if m and last is not None:
                        done = (last["epoch"] - 1) * last["steps"] + last["step"]
                        steps_rerun += max(0, done - (int(m[1]) * last["steps"] + int(m[2])))
                        resumes += 1
                per_epoch = Counter(e.data.get("epoch") for e in events if e.kind == "metrics")
                epochs_repeated += sum(n - 1 for n in per_epoch.values())
                attempts += j.attempt
        rec = [t for _, t in self.recoveries]
        finite = sorted(t for t in rec if not math.isnan(t))
        return {
            "jobs": len(jobs),
            "succeeded": sum(j.status == "succeeded" for j in jobs),
            "lost": len(lost),
            "run_twice": len(set(twice)),
            "epochs_repeated": epochs_repeated,
            "starts": attempts,
            "resumes": resumes,
            "steps_rerun": steps_rerun,
            "recoveries": self.recoveries,
            "recover_median_s": finite[len(finite) // 2] if finite else float("nan"),
            "recover_max_s": finite[-1] if finite else float("nan"),
            "took_s": took,
        }

    def close(self) -> None:
        try:
            self.svc.stop()
        finally:
            self.engine.dispose()
            if self.redis:
                self.redis.stop()
            if self.db:
                self.db.drop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stack", action="store_true", help="own redis-server + own PostgreSQL database")
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=50, help="epochs of each Toy job")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the jobs after the faults")
    args = ap.parse_args()
    stack = "Redis + PostgreSQL (own redis-server, own database)" if args.stack else "embedded SQLite store + broker"
    print(f"fault drill on lbdn serve, {stack}: {args.jobs} Toy jobs x {args.epochs} epochs")
    drill = Drill(args)
    try:
        r = drill.run()
    finally:
        drill.close()
    print(
        f"jobs {r['jobs']}: succeeded {r['succeeded']}, lost {r['lost']}, run twice {r['run_twice']}; "
        f"epochs repeated {r['epochs_repeated']}; {r['resumes']} resumes from a checkpoint re-ran "
        f"{r['steps_rerun']} training steps in all (6 steps per Toy epoch; at least: progress is written every 0.3 s)"
    )
    print("time to recover (fault -> training progress of a new attempt):")
    for fault, t in r["recoveries"]:
        print(f"  {fault:6s} " + ("  (every job had ended)" if math.isnan(t) else f"{t:6.1f} s"))
    print(
        f"recover median {r['recover_median_s']:.1f} s, max {r['recover_max_s']:.1f} s; drill took {r['took_s']:.0f} s"
    )
    sys.exit(1 if r["lost"] or r["run_twice"] else 0)


if __name__ == "__main__":
    main()

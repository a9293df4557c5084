"""`lbdn api --processes N`: N API processes (replicas) on one port, and their supervisor.

Each replica is `lbdn api --replica-of <this pid>` (api.server.serve_replica): a whole API with its
own SO_REUSEPORT socket on the port, its own event loop, threads, DB pool, caches and certify
processes. The supervisor (this process) serves nothing: it restarts a replica that dies, passes
SIGTERM/SIGINT on to all of them and waits for their graceful shutdown, and its replicas die with
it even when it is killed (PR_SET_PDEATHSIG). Nothing is shared between replicas but the store and
the broker (README "Concurrency": what that means for per-tenant limits and the key cache).

Metrics: a scrape through the shared port reaches one replica, so the replicas keep their counters
in prometheus_client's multiprocess files (PROMETHEUS_MULTIPROC_DIR: LBDN_HOME/api-metrics/PORT,
emptied at the supervisor's start and removed at its end) and every replica answers /metrics with the
sum over all of them (api.metrics). A replica that exits keeps its counts in the sum, as counters
must; its live gauges are dropped (mark_process_dead).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from api.server import reuseport_socket
from core.settings import Settings

STOP_S = 10.0  # a replica's graceful shutdown takes up to 5 s (uvicorn) plus its certify pool's
QUICK_EXIT_S = 10.0  # a replica that exits sooner than this after its start counts as a failed start
MAX_QUICK_EXITS = 5  # failed starts in a row after which the supervisor gives up (port taken, bad settings)


def replica_env(settings: Settings, processes: int) -> dict[str, str]:
    """The replicas' environment: this one, plus LBDN_API_PROCESSES, and, unless it was set, a
    certify concurrency per replica that keeps the total about that of one API process (the
    certify processes compete with every replica for the same cores)."""
    env = dict(os.environ, LBDN_API_PROCESSES=str(processes), PYTHONUNBUFFERED="1")
    if "certify_concurrency" not in settings.model_fields_set:
        env["LBDN_CERTIFY_CONCURRENCY"] = str(replica_certify_concurrency(settings.certify_concurrency, processes))
    return env


def replica_certify_concurrency(total: int, processes: int) -> int:
    return max(1, round(total / processes))


@dataclass
class Replica:
    index: int
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    """Starts `processes` replicas on host:port and keeps them running until SIGTERM or SIGINT."""

    def __init__(self, settings: Settings, host: str, port: int, processes: int) -> None:
        self.host, self.port, self.processes = host, port, processes
        self.env = replica_env(settings, processes)
        # prometheus_client's multiprocess files: one folder per home and port, emptied by run()
        # once the port is ours (what a supervisor killed by SIGKILL left there is stale)
        self.metrics_dir = settings.home.resolve() / "api-metrics" / str(port)
        self.env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        self.up_since = time.time()  # the start-up re-send's cutoff, the same in every replica
        self.replicas: dict[int, Replica] = {}
        self.stopping = threading.Event()
        self.quick_exits = 0

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "api.cli",
            "api",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--replica-of",
            str(os.getpid()),
            "--up-since",
            repr(self.up_since),
        ]

    def spawn(self, index: int) -> None:
        # a process group of its own: Ctrl-C reaches the supervisor only, which stops the replicas
        # in order instead of racing them (it would restart the ones that exit first)
        proc = subprocess.Popen(self.argv(), env=self.env, process_group=0)
        self.replicas[index] = Replica(index, proc)
        print(f"lbdn: API replica {index} pid {proc.pid}", flush=True)

    def run(self) -> int:
        """Serve until stopped; the exit status (1: replicas kept failing to start)."""
        # Held (bound, not listening) while the replicas run: a port that another program holds
        # fails here at once, and nobody else takes it while a replica restarts.
        refuse_shared_port(self.host, self.port)
        guard = reuseport_socket(self.host, self.port)
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            print(
                f"lbdn API on http://{self.host}:{self.port}, {self.processes} processes"
                f"  (OpenAPI docs: http://{self.host}:{self.port}/docs)",
                flush=True,
            )
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            self.metrics_dir.mkdir(parents=True)
            for i in range(self.processes):
                self.spawn(i)
            while not self.stopping.wait(0.5):
                if not self._restart_dead():
                    return 1
            return 0
        finally:
            self._stop_all()
            guard.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _stop(self, _signum: int, _frame: object) -> None:
        self.stopping.set()

    def _restart_dead(self) -> bool:
        """Start again every replica that exited; False once they keep failing at start."""
        for index, replica in list(self.replicas.items()):
            code = replica.proc.poll()
            if code is None or self.stopping.is_set():
                continue
            quick = time.monotonic() - replica.started < QUICK_EXIT_S
            self.quick_exits = self.quick_exits + 1 if quick else 0
            if self.quick_exits >= MAX_QUICK_EXITS:
                print(f"lbdn: API replicas keep exiting at start ({code}); stopping", flush=True)
                return False
            print(f"lbdn: API replica {index} exited ({code}); starting a new one", flush=True)
            self._kill_group(replica)  # certify processes of a replica killed by SIGKILL
            self._forget_gauges(replica)
            if quick:
                time.sleep(min(30.0, 2.0**self.quick_exits))
            self.spawn(index)
        return True

    def _stop_all(self) -> None:
        for replica in self.replicas.values():
            if replica.proc.poll() is None:
                replica.proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + STOP_S
        for replica in self.replicas.values():
            try:
                replica.proc.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"lbdn: API replica {replica.index} did not stop within {STOP_S:.0f}s; killing it", flush=True)
            self._kill_group(replica)
            replica.proc.wait()

    def _forget_gauges(self, replica: Replica) -> None:
        """Drop the live gauges of a replica that exited (its counters stay in the sum)."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(replica.proc.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]

    @staticmethod
    def _kill_group(replica: Replica) -> None:
        try:
            os.killpg(replica.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def refuse_shared_port(host: str, port: int) -> None:
    """OSError when anything is bound to host:port, even another supervisor's replicas: with
    SO_REUSEPORT alone, a second `lbdn api --processes N` of the same user would join their port
    and share its connections instead of failing like a second plain `lbdn api`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no owner
        probe.bind((host, port))


def run_replicas(settings: Settings, host: str, port: int, processes: int) -> int:
    """`lbdn api --processes N` (N > 1): the supervisor's exit status."""
    return Supervisor(settings, host, port, processes).run()

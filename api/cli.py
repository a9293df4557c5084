"""`lbdn`: serve (API + one worker, zero set-up), api, worker, keys create|list|revoke; every other
subcommand (submit, jobs, certify, export, ...) is the client's (client.cli)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.settings import Settings

# The server's modules (core.settings, core.store: SQLAlchemy, Alembic) are imported where they are
# used: `lbdn submit`, `lbdn jobs` and the other client commands go straight to client.cli and
# would otherwise pay ~0.3 s for a store they never open.


def _store(settings: Settings) -> Any:
    from core.store import init_db, make_engine, session_factory

    engine = make_engine(settings.db_url)
    init_db(engine)
    return session_factory(engine)


def check_bind(settings: Settings, host: str) -> None:
    """Refuse LBDN_AUTH=none beyond loopback, and a keyed server beyond loopback with no key yet
    (it could only answer 401). Requests are checked at every call too (api.auth): this is a courtesy."""
    from api.auth import is_loopback, listen_problem

    problem = listen_problem(settings.model_copy(update={"host": host}))
    if problem:
        sys.exit(f"lbdn: refusing to listen on {host}: {problem}")
    if is_loopback(host):
        return
    from core.store import keys

    with _store(settings)() as s:
        if keys.any_active_key(s):
            return
    sys.exit(
        f"lbdn: refusing to listen on {host}: no API key exists, so every /v1 request would answer 401.\n"
        "  Create one first:  lbdn keys create --tenant NAME\n"
        "  or listen on loopback only:  --host 127.0.0.1"
    )


def run_api(settings: Settings, host: str, port: int, processes: int = 1) -> None:
    """`lbdn api`: one process, or `processes` replicas on one port under a supervisor (api.replicas)."""
    from api.replicas import run_replicas
    from api.server import run_api as run_one

    check_bind(settings, host)
    if processes <= 1:
        run_one(settings, host, port)
        return
    _store(settings)  # migrated once here, before the replicas start (each one checks again, in turn)
    try:
        code = run_replicas(settings, host, port, processes)
    except OSError as e:
        sys.exit(f"lbdn: cannot listen on {host}:{port}: {e}")
    if code:
        sys.exit(code)


def worker_argv(settings: Settings, queues: str, concurrency: int, pool: str, loglevel: str) -> list[str]:
    """Celery's arguments; `-c` is the worker's number of devices (worker.devices: one process each)."""
    prefixed = ",".join(settings.queue_prefix + q.strip() for q in queues.split(",") if q.strip())
    return [
        "worker",
        "-Q",
        prefixed,
        "-c",
        str(concurrency),
        "-P",
        pool,
        "--loglevel",
        loglevel,
        "-n",
        worker_name(),
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def worker_name() -> str:
    import socket

    return f"lbdn-{os.getpid()}@{socket.gethostname()}"


def run_worker(
    settings: Settings,
    queues: str,
    concurrency: int,
    pool: str,
    loglevel: str,
    devices: str | None = None,
    sharing: int = 0,
) -> None:
    """A Celery worker whose tasks get `settings` (worker.app.WorkerApp carries them), one pool
    process per device (worker.devices). sharing: other processes computing on this machine at
    once (`lbdn serve`'s API), counted by the threads rule."""
    from worker.app import WorkerApp, plan_devices

    try:
        names = plan_devices(settings, devices, concurrency, sharing, worker_name())
    except ValueError as e:
        sys.exit(f"lbdn worker: {e}")
    settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    _store(settings)  # the tables exist before the first job arrives
    WorkerApp(settings).worker_main(argv=worker_argv(settings, queues, len(names), pool, loglevel))


WORKER_STOP_S = 60.0  # Celery's warm shutdown: the running job checkpoints at its next step, then it exits
WORKER_IDLE_STOP_S = 15.0  # an idle worker's warm shutdown takes 3-7 s here; past this it is stuck


class _Stop(BaseException):
    """SIGTERM to `lbdn serve` (raised like KeyboardInterrupt, so `finally:` stops the worker)."""


def _raise_stop(_signum: int, _frame: Any) -> None:
    raise _Stop


def serve(settings: Settings, host: str, port: int, api_processes: int = 1) -> None:
    """The API (`api_processes` replicas, api.replicas) and one worker process; SIGTERM or SIGINT
    (Ctrl-C) stops both, and a job that was running checkpoints and resumes at the next start.

    uvicorn catches SIGTERM/SIGINT while it serves and raises the signal again once it has shut
    down; with Python's default SIGTERM action that re-raise ended this process before `finally:`
    could stop the worker, which ran on as an orphan (issue 7). Our handler turns it into _Stop.
    """
    check_bind(settings, host)
    settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    _store(settings)  # tables exist before either process starts
    signal.signal(signal.SIGTERM, _raise_stop)
    supervisor = WorkerSupervisor()
    try:
        supervisor.start()
        print(f"lbdn: data in {settings.home.resolve()}", flush=True)
        run_api(settings, host, port, api_processes)
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        supervisor.stop(settings)
        print("lbdn: stopped", flush=True)


class WorkerSupervisor:
    """The one worker of `lbdn serve`, started again when it dies (killed, out of memory): a job it
    was running resumes from its checkpoint once its lease runs out (core.reaper)."""

    def __init__(self) -> None:
        import threading

        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="lbdn-worker-supervisor", daemon=True)

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            # the API computes beside the worker (certify): one more process in the threads rule
            [sys.executable, "-m", "api.cli", "worker", "--sharing", "1"],
            start_new_session=True,  # Ctrl-C is ours to pass on; the group is the worker and its pool
        )
        print(f"lbdn: worker pid {self.proc.pid}", flush=True)

    def start(self) -> None:
        with self._lock:
            self._spawn()
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            with self._lock:
                if self._stopping.is_set() or self.proc is None or self.proc.poll() is None:
                    continue
                print(f"lbdn: the worker exited ({self.proc.returncode}); starting a new one", flush=True)
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # pool children of a killed main process
                except ProcessLookupError:
                    pass
                self._spawn()

    def stop(self, settings: Settings) -> None:
        self._stopping.set()
        with self._lock:
            if self.proc is not None:
                # a running job gets time to reach its next step; an idle worker has nothing to save
                busy = self.proc.poll() is None and worker_busy(settings, self.proc.pid)
                stop_worker(self.proc, WORKER_STOP_S if busy else WORKER_IDLE_STOP_S)


def stop_worker(worker: subprocess.Popen[bytes], timeout: float = WORKER_STOP_S) -> None:
    """SIGTERM to the worker's main process: Celery's warm shutdown, in which the running job
    checkpoints and goes back to the queue and idle pool children exit cleanly (signalling the whole
    group killed them mid-wait, which Celery logged as an ERROR). Whatever is left after `timeout` is
    killed (a job it was running then resumes from its last checkpoint)."""
    try:
        os.kill(worker.pid, signal.SIGTERM)
        worker.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"lbdn: the worker did not stop within {timeout:.0f}s; killing it", flush=True)
    except ProcessLookupError:
        pass
    try:
        os.killpg(worker.pid, signal.SIGKILL)  # pool children that outlived their main process
    except ProcessLookupError:
        pass
    worker.wait()


def worker_busy(settings: Settings, group: int) -> bool:
    """Whether a process of this process group (a worker and its pool) holds a running job's lease
    (owners are `host:pid:token`, leases.acquire's callers)."""
    import socket

    from sqlalchemy import select

    from core.states import JobState
    from core.store import Job

    with _store(settings)() as s:
        owners = s.scalars(select(Job.lease_owner).where(Job.status == JobState.running)).all()
    for owner in owners:
        host, _, rest = (owner or "").partition(":")
        pid = rest.partition(":")[0]
        if host == socket.gethostname() and pid.isdigit():
            try:
                if os.getpgid(int(pid)) == group:
                    return True
            except ProcessLookupError:
                continue
    return False


def keys_command(settings: Settings, args: argparse.Namespace) -> None:
    from core.store import keys, transaction

    sessions = _store(settings)
    with transaction(sessions) as s:
        if args.keys_cmd == "create":
            key, secret = keys.create_key(s, args.tenant, args.name)
            print(f"created {key.id} for tenant {key.tenant!r}; the secret is shown once:\n{secret}")
            _open_mode_jobs(s, args.tenant, args.adopt_local)
        elif args.keys_cmd == "adopt-local":
            _open_mode_jobs(s, args.tenant, adopt=True)
        elif args.keys_cmd == "list":
            for k in keys.list_keys(s):
                state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
                print(
                    f"{k.id}  tenant={k.tenant}  name={k.name or '-'}  created={k.created_at:%Y-%m-%d %H:%M}  {state}"
                )
        elif not keys.revoke_key(s, args.key_id):
            sys.exit(f"lbdn: no active key {args.key_id!r}")
        else:
            print(f"revoked {args.key_id}")


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _open_mode_jobs(s: Any, tenant: str, adopt: bool) -> None:
    """Move the open mode's jobs to `tenant`, or warn (stderr) that keys cannot see them: once a key
    exists every request needs one, and a key sees its own tenant's jobs only (README "API keys,
    access and limits")."""
    from api.auth import OPEN_TENANT
    from core.store import keys

    if tenant == OPEN_TENANT:
        return
    if adopt:
        moved, moved_sweeps = keys.move_tenant(s, OPEN_TENANT, tenant)
        print(f"moved {_count(moved, 'job')} and {_count(moved_sweeps, 'sweep')} of the open mode to {tenant!r}")
        return
    n_jobs, n_sweeps = keys.tenant_holdings(s, OPEN_TENANT)
    if n_jobs or n_sweeps:
        print(
            f"WARNING: {_count(n_jobs, 'job')} and {_count(n_sweeps, 'sweep')} were made in the open mode"
            f" (tenant {OPEN_TENANT!r});"
            " from now on every request needs a key and sees its own tenant's jobs only, so no key sees them.\n"
            f"  To give them to {tenant!r}:  lbdn keys adopt-local --tenant {tenant}",
            file=sys.stderr,
        )


def parser(settings: Settings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lbdn", description="Lipschitz-bounded deep networks as a service")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, text in (("serve", "API + one worker with embedded defaults"), ("api", "the HTTP API only")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--host", default=settings.host)
        sp.add_argument("--port", type=int, default=settings.port)
        sp.add_argument(
            "--processes" if name == "api" else "--api-processes",
            dest="processes",
            type=int,
            default=settings.api_processes,
            help=f"API processes on the port (default LBDN_API_PROCESSES={settings.api_processes})",
        )
    # a replica of `lbdn api --processes N`, started by its supervisor (api.replicas)
    sub.choices["api"].add_argument("--replica-of", type=int, default=None, help=argparse.SUPPRESS)
    sub.choices["api"].add_argument("--up-since", type=float, default=None, help=argparse.SUPPRESS)
    w = sub.add_parser("worker", help="a Celery worker that runs jobs")
    w.add_argument("--queues", default="gpu,cpu", help="queue names, comma-separated (default gpu,cpu)")
    w.add_argument(
        "--devices",
        default=None,
        help="auto (every GPU, else --concurrency CPU processes), cpu, all, or a list: cuda:0,cuda:2 / cpu,cpu "
        f"(default LBDN_WORKER_DEVICES={settings.worker_devices}); one pool process per device",
    )
    w.add_argument("--concurrency", type=int, default=1, help="CPU processes of --devices auto (no GPU) or cpu")
    w.add_argument("--sharing", type=int, default=0, help=argparse.SUPPRESS)  # lbdn serve: the API computes too
    w.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    w.add_argument("--loglevel", default="INFO")
    dl = sub.add_parser("download", help="fetch a public dataset into LBDN_DATA_DIR (md5-checked)")
    dl.add_argument("dataset", choices=["cifar10", "cifar100", "tiny_imagenet"])
    k = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_cmd", required=True)
    create = k.add_parser("create", help="make a key (the secret is printed once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name")
    create.add_argument(
        "--adopt-local",
        action="store_true",
        help="also move the jobs and sweeps made in the open mode (tenant 'local') to this tenant",
    )
    adopt = k.add_parser("adopt-local", help="move the open mode's jobs and sweeps (tenant 'local') to a tenant")
    adopt.add_argument("--tenant", required=True)
    k.add_parser("list", help="all keys (never their secrets)")
    k.add_parser("revoke", help="revoke a key").add_argument("key_id")
    return p


def _replica(settings: Settings, args: argparse.Namespace) -> None:
    from api.server import serve_replica

    serve_replica(settings, args.host, args.port, args.up_since or 0.0, parent=args.replica_of)


# Subcommands this parser owns; every other one is a client command (client.cli). Add new server
# subcommands here.
SERVER_COMMANDS = ("serve", "api", "worker", "keys", "download")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] not in (*SERVER_COMMANDS, "-h", "--help"):
        # submit, jobs, show, ...: the client package (it imports no server code)
        from client.cli import main as client_main

        sys.exit(client_main(argv))
    if argv and argv[0] in ("-h", "--help"):
        from client.cli import parser as client_parser

        client_parser().print_help()
        print("\nserver commands (run the service here):")
    from core.settings import get_settings

    try:
        settings = get_settings()
    except ValueError as e:
        sys.exit(f"lbdn: invalid settings: {e}")
    args = parser(settings).parse_args(argv)
    if args.cmd == "serve":
        serve(settings, args.host, args.port, args.processes)
    elif args.cmd == "api" and args.replica_of is not None:
        _replica(settings, args)
    elif args.cmd == "api":
        run_api(settings, args.host, args.port, args.processes)
    elif args.cmd == "worker":
        run_worker(settings, args.queues, args.concurrency, args.pool, args.loglevel, args.devices, args.sharing)
    elif args.cmd == "download":
        from lipcore.data.download import download

        print(f"lbdn: {args.dataset} in {download(args.dataset, settings.datasets_dir)}", flush=True)
    else:
        keys_command(settings, args)


if __name__ == "__main__":
    main()

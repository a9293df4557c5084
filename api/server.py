"""Running the API under uvicorn: one process (`lbdn api`), or one replica of several
(`lbdn api --processes N`, api.replicas starts them; each one is this module's `serve_replica`)."""

from __future__ import annotations

import gc
import os
import signal
import socket
import sys
import threading
from typing import Any

import uvicorn

from core.settings import Settings


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's settings of every API process (one or a replica)."""
    from api.protocol import with_header_timeout

    return dict(
        log_level="info",
        access_log=settings.access_log,
        timeout_graceful_shutdown=5,
        # longer than clients keep idle connections (httpx 5 s, browsers more): a server that closes
        # a kept-alive connection just as a client reuses it makes that request fail (ReadError)
        timeout_keep_alive=75,
        # limits (issue 22): a header read timeout (api.protocol) and a bound on connections + requests
        http=with_header_timeout(settings.header_timeout_s),
        limit_concurrency=settings.limit_concurrency,
    )


def build_app(settings: Settings, up_since: float | None = None) -> Any:
    """The app of this process, with its long-lived heap frozen and torch warming in the background."""
    from api.main import create_app

    app = create_app(settings, up_since=up_since)
    # The heap built so far (FastAPI, pydantic, SQLAlchemy, the routes) lives as long as the process:
    # frozen out of the collector's generations, a full collection scans only what requests allocate
    # (here, not in create_app: a test process that builds apps keeps the default). A shorter GIL
    # switch interval was tried too: it halved the poll throughput on PostgreSQL (thread handoffs).
    gc.collect()
    gc.freeze()
    threading.Thread(target=_warm_torch, name="lbdn-torch-warm", daemon=True).start()
    return app


def run_api(settings: Settings, host: str, port: int) -> None:
    """The API in this one process (checks of where it listens done by the caller)."""
    settings = settings.model_copy(update={"host": host})  # the auth rule depends on where we listen
    print(f"lbdn API on http://{host}:{port}  (OpenAPI docs: http://{host}:{port}/docs)", flush=True)
    uvicorn.run(build_app(settings), host=host, port=port, **uvicorn_options(settings))


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket on host:port with SO_REUSEPORT: every replica listens on a socket of its own on
    the same port, and the kernel spreads new connections over them evenly (by a hash of the
    client's address and port). One shared listening socket lets whichever process wakes first
    take the connection, which piles kept-alive clients onto the busiest replica.
    Bound, not listening: asyncio's server listens once the app's start-up is done, so no
    connection waits in the queue of a replica that is still starting."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def serve_replica(settings: Settings, host: str, port: int, up_since: float, parent: int) -> None:
    """One API replica: its own SO_REUSEPORT socket on the shared port; it dies with its supervisor
    `parent` (api.replicas), even when that is killed with SIGKILL."""
    die_with_parent(signal.SIGTERM)  # SIGTERM: uvicorn's graceful shutdown, which ends the certify pool
    if os.getppid() != parent:  # it died before the line above: nobody would stop this process
        sys.exit("lbdn: the API supervisor is gone")
    settings = settings.model_copy(update={"host": host})
    sock = reuseport_socket(host, port)
    config = uvicorn.Config(build_app(settings, up_since), host=host, port=port, **uvicorn_options(settings))
    ReplicaServer(config).run(sockets=[sock])


class ReplicaServer(uvicorn.Server):
    """uvicorn's server, logging "Uvicorn running on" as it does when it binds the socket itself."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            self._log_started_message(sockets)


def die_with_parent(sig: int) -> None:
    """Linux: `sig` to this process when its parent dies, even by SIGKILL (PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the supervisor's own shutdown has to do
        pass


def _warm_torch() -> None:
    """The API runs torch for one thing, the memory estimate of a submitted spec (lipcore.cost,
    imported on first use): set this process's torch threads by the rule first (1: its work is
    small and the cores belong to the workers and certify processes), and import it in the
    background now, so the first submission does not wait for torch's import (10 s measured on a
    loaded 2-core machine, bench/threads.py)."""
    from lipcore.runtime import set_torch_threads, torch_threads, usable_cores

    set_torch_threads(torch_threads(sharing=usable_cores()))
    import lipcore.cost  # noqa: F401

"""Who may call the API: bearer API keys for /v1, and a separate rule for /metrics and /readyz.

The open mode (every request is tenant `local`) is a choice, never a side effect:
- `LBDN_AUTH=keys`: every /v1 request needs an active key; with none, every /v1 route answers 401.
- `LBDN_AUTH=none`: open; refused at start-up unless the server listens on loopback only.
- unset: `keys` when listening beyond loopback; on loopback, open until the first key is created
  and `keys` from then on, for good (revoking every key leaves the API closed, not open).
/metrics and /readyz answer to `Authorization: Bearer $LBDN_METRICS_TOKEN` when that is set, and to
loopback clients only when it is not (a scraper beyond loopback needs the token).
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import time
from typing import Annotated, Literal

from cachetools import TTLCache
from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from api.problems import problem
from api.services import services_of
from core.settings import Settings
from core.store import keys
from core.store.tables import ApiKey

OPEN_TENANT = "local"  # the tenant of every request in the open mode
OPS_PATHS = ("/metrics", "/readyz")
AuthMode = Literal["keys", "none", "auto"]
_bearer = HTTPBearer(auto_error=False, description="an API key made with `lbdn keys create`")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback addresses (127.0.0.0/8, ::1); False for 0.0.0.0, names, LAN."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def auth_mode(settings: Settings) -> AuthMode:
    """The mode for a server listening on settings.host ('auto': open until the first key exists)."""
    if settings.auth is not None:
        return settings.auth
    return "auto" if is_loopback(settings.host) else "keys"


def listen_problem(settings: Settings) -> str | None:
    """Why the server must not start listening on settings.host, or None if it may."""
    if settings.auth == "none" and not is_loopback(settings.host):
        return (
            f"LBDN_AUTH=none opens the API to anyone who reaches {settings.host}; it is allowed on a "
            "loopback address only. Create a key (lbdn keys create --tenant NAME) and drop LBDN_AUTH=none, "
            "or listen on --host 127.0.0.1"
        )
    return None


def _keys_ever_created(request: Request) -> bool:
    """Whether any key (active or revoked) exists; remembered once true, since keys are never deleted."""
    services = services_of(request)
    if not services.keys_seen:
        with services.sessions() as session:
            services.keys_seen = session.scalar(select(ApiKey.id).limit(1)) is not None
    return services.keys_seen


def key_cache(ttl_s: float) -> TTLCache[str, str]:
    """Tenants of recently seen active keys by the key's SHA-256 (never the secret), for `ttl_s`
    seconds (LBDN_KEY_CACHE_S; 0 disables).

    A poll costs the API a few ms of CPU, and the key lookup (a thread hop and a query) was a third
    of it; dashboards and `watch` loops poll with the same key every second. Only successful lookups
    are kept, so a revoked key stops working within ttl_s (revocation is a `lbdn keys revoke` in
    another process; there is nothing to notify). Used on the event loop only (no lock needed).
    """
    return TTLCache(maxsize=4096, ttl=ttl_s)


class AuthFailures:
    """Unknown or revoked keys per client address (LBDN_AUTH_FAILURES_PER_WINDOW in each
    LBDN_AUTH_FAILURE_WINDOW_S): past the limit, that address's keys that are not already known are
    refused with 429 before any database work, so a flood of bad keys cannot crowd out the lookups
    of real ones. A key already in the key cache still works from that address (it costs nothing).
    Per API process; in memory for at most 65,536 addresses. Used on the event loop only."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit, self.window_s = limit, window_s
        self.seen: TTLCache[str, tuple[float, int]] = TTLCache(maxsize=65536, ttl=window_s)

    def _current(self, address: str) -> tuple[float, int]:
        """(start, failures) of the address's window; a window that has passed starts again."""
        now = time.monotonic()
        start, count = self.seen.get(address, (now, 0))
        return (now, 0) if now - start >= self.window_s else (start, count)

    def check(self, address: str) -> None:
        """429 with Retry-After while `address` is over the limit in its current window."""
        start, count = self._current(address)
        if count >= self.limit:
            wait = max(1, math.ceil(start + self.window_s - time.monotonic()))
            raise HTTPException(
                429,
                f"Authorization: {count} requests with unknown or revoked API keys from your address in "
                f"{self.window_s:g} s (LBDN_AUTH_FAILURES_PER_WINDOW={self.limit}); retry after {wait} s",
                headers={"Retry-After": str(wait)},
            )

    def record(self, address: str) -> None:
        start, count = self._current(address)
        self.seen[address] = (start, count + 1)


async def current_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The tenant of the bearer key; the open tenant only in the open mode (see the module doc)."""
    services = services_of(request)
    if credentials is not None:
        cache = services.key_cache
        digest = keys.digest(credentials.credentials)
        tenant = cache.get(digest)
        if tenant is None:
            failures = services.auth_failures
            address = request.client.host if request.client else "unknown"
            failures.check(address)
            # a short session of its own, on a thread: a request never holds a connection for its life
            tenant = await run_in_threadpool(_lookup, services.sessions, digest)
            if tenant is None:
                failures.record(address)
                raise HTTPException(401, "Authorization: unknown or revoked API key", headers=_CHALLENGE)
            cache[digest] = tenant
        return tenant
    mode = services.auth_mode
    if mode == "auto" and not services.keys_seen:
        await run_in_threadpool(_keys_ever_created, request)
    if mode == "none" or (mode == "auto" and not services.keys_seen):
        return OPEN_TENANT
    raise HTTPException(
        401,
        "Authorization: this server needs an API key; send 'Authorization: Bearer <key>' "
        "(keys are made with `lbdn keys create --tenant NAME`)",
        headers=_CHALLENGE,
    )


def _lookup(sessions: sessionmaker[Session], digest: str) -> str | None:
    with sessions() as session:
        return keys.tenant_for_digest(session, digest)


CurrentTenant = Annotated[str, Depends(current_tenant)]


class OpsGuard:
    """Pure ASGI middleware guarding OPS_PATHS: the metrics token if configured, else loopback clients."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") in OPS_PATHS:
            denied = self._denied(scope)
            if denied is not None:
                await denied(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _denied(self, scope: Scope) -> JSONResponse | None:
        if self.token is not None:
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            given = header[7:] if header[:7].lower() == "bearer " else ""
            if hmac.compare_digest(given.encode("latin-1"), self.token.encode("latin-1", "replace")):
                return None
            return problem(401, "Authorization: send 'Authorization: Bearer <LBDN_METRICS_TOKEN>'", headers=_CHALLENGE)
        client = scope.get("client")
        # no client: a Unix socket; "testclient": Starlette's in-process TestClient (never a network peer)
        if client is None or is_loopback(str(client[0])) or client[0] == "testclient":
            return None
        return problem(
            403, f"{scope['path']} answers loopback clients only; set LBDN_METRICS_TOKEN to scrape it from elsewhere"
        )

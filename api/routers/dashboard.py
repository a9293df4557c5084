"""The browser dashboard: `GET /` and its static files under `/dashboard/` (api/dashboard/).

The page itself needs no key: it asks for one, keeps it in the tab's sessionStorage and sends it as
`Authorization: Bearer` on every /v1 call it makes, so everything it shows is the key's tenant's.
No build step: plain JavaScript and the vendored uPlot (api/dashboard/vendor/uplot, MIT, with its
licence). Asset URLs in index.html carry a hash of the file's content (`?v=...`), so assets can be
cached for a year (`immutable`) while index.html itself is always revalidated (`no-cache`): a new
release is picked up on the next load and an unchanged one costs a 304.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response

router = APIRouter(include_in_schema=False)
ROOT = Path(__file__).resolve().parents[1] / "dashboard"
# The only files served, by URL name: a fixed list, so nothing else in the package can be read.
ASSETS: dict[str, tuple[str, str]] = {
    "core.js": ("core.js", "text/javascript; charset=utf-8"),
    "jobs.js": ("jobs.js", "text/javascript; charset=utf-8"),
    "job.js": ("job.js", "text/javascript; charset=utf-8"),
    "models.js": ("models.js", "text/javascript; charset=utf-8"),
    "compare.js": ("compare.js", "text/javascript; charset=utf-8"),
    "sweeps.js": ("sweeps.js", "text/javascript; charset=utf-8"),
    "paper.js": ("paper.js", "text/javascript; charset=utf-8"),
    "app.js": ("app.js", "text/javascript; charset=utf-8"),
    "style.css": ("style.css", "text/css; charset=utf-8"),
    "uPlot.iife.min.js": ("vendor/uplot/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "uPlot.min.css": ("vendor/uplot/uPlot.min.css", "text/css; charset=utf-8"),
    "uPlot-LICENSE.txt": ("vendor/uplot/LICENSE", "text/plain; charset=utf-8"),
}
# Everything the page loads comes from this origin; images the user drops are shown from blob: URLs.
# uPlot styles its elements through the CSSOM (element.style), which style-src does not restrict.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
YEAR = 365 * 24 * 3600


@cache
def _asset(name: str) -> tuple[bytes, str, str]:
    """(content, media type, short content hash) of one listed asset, read once per process."""
    rel, media = ASSETS[name]
    body = (ROOT / rel).read_bytes()
    return body, media, hashlib.sha256(body).hexdigest()[:16]


@cache
def _index() -> tuple[bytes, str]:
    """index.html with `{{v:NAME}}` replaced by NAME's content hash, and its ETag."""
    html = (ROOT / "index.html").read_text(encoding="utf-8")
    for name in ASSETS:
        html = html.replace("{{v:" + name + "}}", _asset(name)[2])
    body = html.encode()
    return body, '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


def _not_modified(request: Request, etag: str) -> bool:
    return etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]


@router.get("/", response_class=HTMLResponse, summary="The dashboard (asks for an API key itself)")
def index(request: Request) -> Response:
    body, etag = _index()
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": etag}
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    return HTMLResponse(body, headers=headers)


@router.get("/dashboard/{name}")
def asset(request: Request, name: str, v: Annotated[str | None, Query(max_length=64)] = None) -> Response:
    """One static file of the dashboard; cached for a year when asked for by its current hash."""
    if name not in ASSETS:
        raise HTTPException(404, f"no dashboard file {name!r}; the files are {', '.join(sorted(ASSETS))}")
    body, media, digest = _asset(name)
    etag = f'"{digest}"'
    # An old hash (a page from before an upgrade) gets today's file, but must not pin it for a year.
    cache_control = f"public, max-age={YEAR}, immutable" if v == digest else "no-cache"
    headers = {**SECURITY_HEADERS, "Cache-Control": cache_control, "ETag": etag}
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media, headers=headers)

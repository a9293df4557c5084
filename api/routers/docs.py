"""`/docs`: Swagger UI served from this package, so the API's documentation renders without internet.

FastAPI's default /docs page loads Swagger UI from a CDN and is blank offline (and /redoc too, which
the app therefore does not serve). The assets are vendored unchanged under api/docs_vendor/swagger-ui
(Apache-2.0, with its licence and VERSION), served from a fixed list like the dashboard's. The page
carries a CSP that allows this origin only, plus the page's one inline script by its hash.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

router = APIRouter(include_in_schema=False)
ROOT = Path(__file__).resolve().parents[1] / "docs_vendor" / "swagger-ui"
PREFIX = "/docs/assets/"
ASSETS: dict[str, str] = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "LICENSE": "text/plain; charset=utf-8",
    "NOTICE": "text/plain; charset=utf-8",
    "VERSION": "text/plain; charset=utf-8",
}
DAY = 24 * 3600


@cache
def _asset(name: str) -> bytes:
    return (ROOT / name).read_bytes()


@cache
def _page(openapi_url: str, title: str) -> tuple[bytes, str]:
    """The Swagger UI page and its Content-Security-Policy (which names its inline script's hash)."""
    html = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=f"{title} - API docs",
        swagger_js_url=PREFIX + "swagger-ui-bundle.js",
        swagger_css_url=PREFIX + "swagger-ui.css",
        swagger_favicon_url=PREFIX + "favicon-32x32.png",
        # Swagger UI's default validator badge is an image from validator.swagger.io: none offline
        swagger_ui_parameters={"validatorUrl": None},
    ).body
    text = bytes(html).decode()
    inline = text.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
    # Swagger UI sets style attributes and injects a few <style> elements as it renders
    csp = (
        f"default-src 'none'; script-src 'self' 'sha256-{digest}'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; font-src 'self' data:; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    )
    return text.encode(), csp


@router.get("/docs", response_class=HTMLResponse)
def docs(request: Request) -> Response:
    body, csp = _page(request.app.openapi_url or "/openapi.json", request.app.title)
    headers = {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    return HTMLResponse(body, headers=headers)


@router.get(PREFIX + "{name}")
def asset(name: str) -> Response:
    """One vendored Swagger UI file (a fixed list: nothing else in the package can be read)."""
    if name not in ASSETS:
        raise HTTPException(404, f"no docs file {name!r}; the files are {', '.join(sorted(ASSETS))}")
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": f"public, max-age={DAY}"}
    return Response(_asset(name), media_type=ASSETS[name], headers=headers)

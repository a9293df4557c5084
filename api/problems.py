"""Errors as RFC 9457 problem details (application/problem+json) with a human-readable `detail`."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

PROBLEM_JSON = "application/problem+json"
FASTAPI_BODY_ERROR = "There was an error parsing the body"  # FastAPI's 400 when json.loads raises non-JSON errors
log = logging.getLogger("lbdn.api")


def problem(status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _where(loc: tuple[Any, ...]) -> str:
    """('body', 'train', 'spec', 'epochs') -> 'spec.epochs' (drops the body and union-tag parts)."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] if parts[0] == "body" else parts
    if len(parts) > 1 and parts[0] in ("train", "evaluate"):  # the `kind` discriminator's tag
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_detail(errors: list[dict[str, Any]]) -> str:
    msgs = []
    for err in errors[:5]:
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        msgs.append(f"{_where(tuple(err.get('loc', ())))}: {msg}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(msgs) + more


def install(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).description
        if exc.status_code == 400 and detail == FASTAPI_BODY_ERROR:  # e.g. RecursionError on deep nesting
            return problem(422, "body: not parseable JSON (nested too deeply?); expected a JSON object")
        return problem(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        return problem(422, validation_detail(errors), errors=errors)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "internal error; the server logged the details")

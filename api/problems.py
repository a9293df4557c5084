"""Errors as RFC 9457 problem details (application/problem+json) with a human-readable `detail`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from core.states import RUNNABLE_KINDS
from core.submit import Refused

PROBLEM_JSON = "application/problem+json"
FASTAPI_BODY_ERROR = "There was an error parsing the body"  # FastAPI's 400 when json.loads raises non-JSON errors
log = logging.getLogger("lbdn.api")


# ---- documentation: every error answer is a problem document -----------------------------------
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details; `detail` says what was wrong and what was expected",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}, "description": "422 from validation: each error"},
        "checks": {"type": "object", "description": "503 from /readyz: each dependency's state"},
    },
    "additionalProperties": True,
}
WHY = {
    400: "malformed request (e.g. a broken multipart body)",
    401: "no valid API key (Authorization: Bearer <key>), or no metrics token",
    403: "allowed to loopback clients only",
    404: "no such job or model for your tenant",
    409: "the job's state does not allow this",
    413: "the body, or the number of inputs, is over a limit",
    415: "the content type is not one this route reads",
    422: "the request is well-formed but invalid; `detail` names the field and what was expected",
    429: "a quota or concurrency limit is reached; retry after Retry-After seconds",
    503: "a dependency is unreachable, or the server is overloaded (load shedding: retry after Retry-After seconds)",
}
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route or router: each code documented as application/problem+json.

    Use on any new route, e.g. `@router.post(..., responses=problem_responses(404, 409, 422))`;
    `install()` also adds the codes every route can answer (401 on /v1, 413, 422) to the document.
    """
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {
            "description": WHY.get(code, HTTPStatus(code).phrase),
            "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}},
        }
        if code in (429, 503):
            entry["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
        if code == 401:
            entry["headers"] = {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}
        out[code] = entry
    return out


V1_PROBLEMS = problem_responses(401, 404, 413, 422)  # what any /v1 route with a job/model id can answer


def _complete(doc: dict[str, Any]) -> dict[str, Any]:
    """Every operation: errors as problem+json (FastAPI's own 422 included), and the codes the
    middleware and auth give on any route (413 anywhere, 401 on /v1, 401/403 on /metrics and /readyz,
    503 where load is shed)."""
    from api.shedding import counted  # (api.shedding answers with this module's problem())

    doc.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    schemas = doc["components"]["schemas"]
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path, ops in doc.get("paths", {}).items():
        for op in ops.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            codes = [413, 422]
            if path.startswith("/v1"):
                codes.append(401)
                if "{" in path:  # an id of the caller's job or model: 404 when it is not theirs
                    codes.append(404)
            if path in ("/metrics", "/readyz"):
                codes += [401, 403]
            if counted(path):  # api.shedding: no place within LBDN_MAX_QUEUE_MS
                codes.append(503)
            responses = op["responses"]
            for code, entry in problem_responses(*codes).items():
                responses.setdefault(str(code), entry)
            for code, entry in list(responses.items()):
                if str(code)[0] in "45":
                    default = problem_responses(int(code))[int(code)]
                    entry["content"] = default["content"]
                    if "headers" in default:
                        entry.setdefault("headers", default["headers"])
                    if entry.get("description") in (None, "", "Validation Error"):
                        entry["description"] = default["description"]
    return doc


def problem(status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _where(loc: tuple[Any, ...]) -> str:
    """('body', 'train', 'spec', 'epochs') -> 'spec.epochs' (drops the body and union-tag parts)."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] if parts[0] == "body" else parts
    if len(parts) > 1 and parts[0] in RUNNABLE_KINDS:  # the `kind` discriminator's tag
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_detail(errors: Sequence[Mapping[str, Any]]) -> str:
    msgs = []
    for err in errors[:5]:
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        msgs.append(f"{_where(tuple(err.get('loc', ())))}: {msg}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(msgs) + more


def install(app: FastAPI) -> None:
    """Problem+json handlers for every error, and an OpenAPI document that declares them."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _complete(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).description
        if exc.status_code == 400 and detail == FASTAPI_BODY_ERROR:  # e.g. RecursionError on deep nesting
            return problem(422, "body: not parseable JSON (nested too deeply?); expected a JSON object")
        return problem(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(Refused)
    async def _refused(_: Request, exc: Refused) -> JSONResponse:  # core.submit's rules
        return problem(exc.status, exc.detail, headers=exc.headers)

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

"""`Client`: the lbdn HTTP API as Python methods; errors as `ApiError` (from problem+json)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

DEFAULT_URL = "http://127.0.0.1:8000"
# Seconds before each repeat of a request that carries an Idempotency-Key (see Client.request):
# 7.5 s in all, about what an API replica takes to restart on a busy machine.
RETRY_WAITS = (0.5, 1.0, 2.0, 4.0)
EVENT_KINDS = ("state", "progress", "metrics", "log")


class ApiError(Exception):
    """An error answer of the server (RFC 9457 problem details), or no answer at all (status 0)."""

    def __init__(self, status: int, title: str, detail: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {title}: {detail}" if status else detail)
        self.status, self.title, self.detail = status, title, detail
        self.body = body or {"status": status, "title": title, "detail": detail}


def _raise_for(r: httpx.Response) -> None:
    if r.is_success:
        return
    try:
        body = r.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    detail = body.get("detail") if isinstance(body.get("detail"), str) else (r.text[:300] or r.reason_phrase)
    raise ApiError(r.status_code, body.get("title") or r.reason_phrase, detail, body or None)


def _new_key() -> str:
    return f"lbdn-client-{uuid.uuid4().hex}"


def _retry_after(r: httpx.Response) -> float:
    """The answer's Retry-After in seconds (at most 10; 0 when absent or a date)."""
    try:
        return min(10.0, max(0.0, float(r.headers.get("Retry-After", "0"))))
    except ValueError:
        return 0.0


class Client:
    """The lbdn service at `url` (default $LBDN_URL or http://127.0.0.1:8000), with $LBDN_API_KEY.

    Every method returns the decoded JSON of the answer and raises ApiError for an error answer or
    an unreachable server (status 0).
    """

    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.url = (url or os.environ.get("LBDN_URL") or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("LBDN_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One HTTP request; ApiError for an error answer or none.

        A request with an Idempotency-Key (`submit`, `create_sweep`) is sent again, with the same
        key, when its answer was lost after it may have reached the server (the connection dropped
        or timed out) or when the server shed it (503, before doing anything), up to
        len(RETRY_WAITS) times: the server answers a repeat with what the first try made, so a
        retry never makes a second job or sweep. A refused connection on the first try fails at
        once: nothing listens there, and nothing was sent.
        """
        waits = list(RETRY_WAITS) if "Idempotency-Key" in (kwargs.get("headers") or {}) else []
        first = True
        while True:
            try:
                r = self.http.request(method, path, **kwargs)
            except httpx.TransportError as e:
                if not waits or (first and isinstance(e, httpx.ConnectError)):
                    raise ApiError(
                        0,
                        "unreachable",
                        f"cannot reach the lbdn service at {self.url} ({e}); start it with `lbdn serve` or set LBDN_URL",
                    ) from None
                time.sleep(waits.pop(0))
                first = False
                continue
            if r.status_code == 503 and waits:
                time.sleep(max(waits.pop(0), _retry_after(r)))
                first = False
                continue
            _raise_for(r)
            return r

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.request(method, path, **kwargs)
        return r.json() if r.content else None

    # ---- jobs -------------------------------------------------------------------------------
    def submit(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """POST /v1/jobs: body {"kind": "train", "spec": {...}} or {"kind": "evaluate", ...}.
        Sent with `idempotency_key`, or a new random one, so that a lost answer can be asked again."""
        headers = {"Idempotency-Key": idempotency_key or _new_key()}
        return self._json("POST", "/v1/jobs", json=body, headers=headers)

    def jobs(self, limit: int = 50, **filters: Any) -> list[dict[str, Any]]:
        """GET /v1/jobs in its order (newest first unless `sort`), following the cursor until
        `limit` jobs are read; `filters`: status, kind, tag (a list), name, model, layer, dataset,
        gamma, seed, sweep, sort (None: not given)."""
        out: list[dict[str, Any]] = []
        params = {k: v for k, v in filters.items() if v not in (None, [], "")}
        cursor = None
        while len(out) < limit:
            page_params = {**params, "limit": min(200, limit - len(out)), **({"cursor": cursor} if cursor else {})}
            page = self._json("GET", "/v1/jobs", params=page_params)
            out += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return out

    def label(self, job_id: str, **labels: Any) -> dict[str, Any]:
        """PATCH /v1/jobs/{id}: set name, tags or note (None clears one)."""
        return self._json("PATCH", f"/v1/jobs/{job_id}", json=labels)

    def metrics_csv(self, job_id: str) -> str:
        return self.request("GET", f"/v1/jobs/{job_id}/metrics", params={"format": "csv"}).text

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{job_id}")

    def metrics(self, job_id: str, since_epoch: int = 0) -> list[dict[str, Any]]:
        return self._json("GET", f"/v1/jobs/{job_id}/metrics", params={"since_epoch": since_epoch})["items"]

    def logs(self, job_id: str, offset: int = 0) -> dict[str, Any]:
        """{"lines": [...], "next_offset": n}: log lines from line `offset` (0-based) on."""
        return self._json("GET", f"/v1/jobs/{job_id}/logs", params={"offset": offset})

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def delete(self, job_id: str) -> None:
        self.request("DELETE", f"/v1/jobs/{job_id}")

    def events(self, job_id: str, after: int = 0) -> Iterator[tuple[int, str, dict[str, Any]]]:
        """The job's Server-Sent Events after sequence number `after`: (seq, kind, data) with kind
        state | progress | metrics | log. Reconnects from the last seen event when the connection
        drops; ends when the server ends the stream (the job has finished)."""
        import json

        while True:
            try:
                with connect_sse(
                    self.http,
                    "GET",
                    f"/v1/jobs/{job_id}/events",
                    params={"after": after},
                    timeout=httpx.Timeout(60.0, read=None),
                ) as source:
                    _raise_for(source.response)
                    for sse in source.iter_sse():
                        # keep-alive pings carry no data (and the id of the last event, as SSE ids persist)
                        if not sse.data or not sse.id or sse.event not in EVENT_KINDS:
                            continue
                        after = int(sse.id)
                        yield after, sse.event, json.loads(sse.data)
                return
            except (httpx.RemoteProtocolError, httpx.ReadError):
                continue  # dropped mid-stream: resume after the last event seen
            except httpx.TransportError as e:
                raise ApiError(0, "unreachable", f"lost the lbdn service at {self.url} ({e})") from None

    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        return self._json("GET", f"/v1/jobs/{job_id}/artifacts")["items"]

    def download(self, job_id: str, name: str, dest: Path) -> Path:
        """Stream one artifact to `dest` (written to a temporary name first, then renamed)."""
        return self.fetch(f"/v1/jobs/{job_id}/artifacts/{name}", dest, what=name)

    def export(self, model_id: str, fmt: str, dest: Path) -> Path:
        """The model as ONNX (`fmt="onnx"`) or a torch.export program (`"torch"`), written to `dest`."""
        return self.fetch(f"/v1/models/{model_id}/export", dest, params={"format": fmt}, what=f"the {fmt} export")

    def fetch(self, path: str, dest: Path, *, params: dict[str, str] | None = None, what: str = "") -> Path:
        """Stream GET `path` to `dest` (a temporary name first, then renamed: no half-written file)."""
        tmp = dest.with_name(dest.name + ".part")
        name = what or path
        try:
            with self.http.stream("GET", path, params=params) as r:
                if not r.is_success:
                    r.read()
                    _raise_for(r)
                with tmp.open("wb") as f:
                    for chunk in r.iter_bytes(1 << 20):
                        f.write(chunk)
        except httpx.TransportError as e:
            raise ApiError(0, "unreachable", f"download of {name} failed ({e})") from None
        tmp.replace(dest)
        return dest

    # ---- models -----------------------------------------------------------------------------
    def models(self, limit: int = 50) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/models", params={"limit": limit})["items"]

    def import_model(self, checkpoint: Path, spec: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/models/import: a checkpoint file (the paper's model.ckpt or a model.safetensors)
        with the spec it was trained under; the new model."""
        parts = [("checkpoint", (checkpoint.name, checkpoint.read_bytes(), "application/octet-stream"))]
        return self._json("POST", "/v1/models/import", data={"spec": json.dumps(spec)}, files=parts, timeout=300.0)

    def model(self, model_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/models/{model_id}")

    def certify(self, model_id: str, files: list[Path], attack: bool = False, scale: str = "pixel") -> dict[str, Any]:
        """Certified radii of image / .npy files (multipart upload); `scale` says the space of the
        values: 'pixel' ([0,1], normalised by the server) or 'model' (already normalised)."""
        parts = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in files]
        return self._json(
            "POST",
            f"/v1/models/{model_id}/certify",
            params={"attack": str(attack).lower()},
            data={"scale": scale},
            files=parts,
            timeout=None if attack else 120.0,
        )

    # ---- sweeps and the paper ---------------------------------------------------------------
    def create_sweep(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """POST /v1/sweeps, with `idempotency_key` or a new random one (as `submit`)."""
        headers = {"Idempotency-Key": idempotency_key or _new_key()}
        return self._json("POST", "/v1/sweeps", json=body, headers=headers)

    def sweeps(self, preset: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if preset:
            params["preset"] = preset
        return self._json("GET", "/v1/sweeps", params=params)["items"]

    def sweep(self, sweep_id: str, history: bool = False) -> dict[str, Any]:
        return self._json("GET", f"/v1/sweeps/{sweep_id}", params={"history": str(history).lower()})

    def cancel_sweep(self, sweep_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/sweeps/{sweep_id}/cancel")

    def presets(self) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/paper/presets")["items"]

    def preset(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/paper/presets/{name}")

"""Every kind of bad request gets a clear 4xx problem+json, and the server keeps serving."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

KWL = {"model": "KWL", "layer": "Sandwich", "scale": "small", "dataset": "cifar10", "epochs": 1}
TOY = {"model": "Toy", "layer": "Sandwich", "epochs": 2}


def png(w=32, h=32, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), (10, 20, 30) if mode == "RGB" else 0).save(buf, "PNG")
    return buf.getvalue()


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def bomb() -> bytes:
    """A 1-bit PNG declaring 20000 x 20000 pixels, a few KB on the wire."""
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")
    return buf.getvalue()


def shape_bomb() -> bytes:
    """A .npy header declaring 10^12 floats followed by 8 bytes."""
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }"
    header += " " * (64 - (10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 8


def npy_header_only(shape: str) -> bytes:
    """A .npy file whose header declares `shape` (a Python tuple literal) followed by 8 bytes."""
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': " + shape + ", }"
    header += " " * (64 - (10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 8


def deep_json(prefix: bytes, depth: int, suffix: bytes = b"}") -> bytes:
    return prefix + b"[" * depth + b"]" * depth + suffix


GOOD_IMG = [[[0.5] * 32] * 32] * 3
HUGE = str(2**63)
JSON = {"content-type": "application/json"}
FOLDER = {**KWL, "dataset": "image_folder"}
JOBS = "/v1/jobs"
CERT = "/v1/models/{model}/certify"
CERT_TOY = "/v1/models/{toy}/certify"

# (name, method, path, request kwargs, expected status, words the problem's detail must contain)
# fmt: off
CASES = [
    ("spec field out of range", "post", JOBS, {"json": {"kind": "train", "spec": {**TOY, "epochs": 0}}}, 422, ["spec.epochs", "greater than or equal to 1"]),
    ("spec unknown field", "post", JOBS, {"json": {"kind": "train", "spec": {**TOY, "epoch": 3}}}, 422, ["spec.epoch", "Extra inputs"]),
    ("spec wrong combination", "post", JOBS, {"json": {"kind": "train", "spec": {"model": "Toy", "dataset": "cifar10"}}}, 422, ["spec", "Toy"]),
    ("spec wrong type", "post", JOBS, {"json": {"kind": "train", "spec": {**TOY, "lr": "fast"}}}, 422, ["spec.lr"]),
    ("unknown job kind", "post", JOBS, {"json": {"kind": "bake", "spec": TOY}}, 422, ["kind"]),
    ("no spec", "post", JOBS, {"json": {"kind": "train"}}, 422, ["spec", "Field required"]),
    ("image folder outside data dir", "post", JOBS, {"json": {"kind": "train", "spec": {**KWL, "dataset": "image_folder", "data_path": "/etc"}}}, 422, ["spec.data_path", "inside"]),
    ("image folder missing", "post", JOBS, {"json": {"kind": "train", "spec": {**KWL, "dataset": "image_folder", "data_path": "nope"}}}, 422, ["spec.data_path", "no folder"]),
    ("attack eps out of range", "post", JOBS, {"json": {"kind": "evaluate", "model_id": "{model}", "attack": {"eps": [0]}}}, 422, ["attack.eps.0"]),
    ("custom attack without attacks", "post", JOBS, {"json": {"kind": "evaluate", "model_id": "{model}", "attack": {"version": "custom"}}}, 422, ["attack", "custom"]),
    ("evaluate unknown model", "post", JOBS, {"json": {"kind": "evaluate", "model_id": "job_nope"}}, 404, ["job_nope"]),
    ("evaluate the toy regression", "post", JOBS, {"json": {"kind": "evaluate", "model_id": "{toy}"}}, 422, ["Toy"]),
    ("malformed JSON", "post", JOBS, {"content": b"{nope", "headers": {"content-type": "application/json"}}, 422, ["JSON"]),
    ("job as text/plain", "post", JOBS, {"content": b"kind=train", "headers": {"content-type": "text/plain"}}, 415, ["application/json"]),
    ("job as form", "post", JOBS, {"data": {"kind": "train"}}, 415, ["application/json"]),
    ("declared body too large", "post", JOBS, {"content": b"x" * 300_000, "headers": {"content-type": "application/json"}}, 413, ["LBDN_MAX_UPLOAD_BYTES"]),
    ("streamed body too large", "post", JOBS, {"content": (b"x" * 10_000 for _ in range(30)), "headers": {"content-type": "application/json"}}, 413, ["LBDN_MAX_UPLOAD_BYTES"]),
    ("unknown job", "get", "/v1/jobs/job_nope", {}, 404, ["job_nope"]),
    ("unknown job metrics", "get", "/v1/jobs/job_nope/metrics", {}, 404, ["job_nope"]),
    ("unknown job events", "get", "/v1/jobs/job_nope/events", {}, 404, ["job_nope"]),
    ("unknown job cancel", "post", "/v1/jobs/job_nope/cancel", {}, 404, ["job_nope"]),
    ("unknown job delete", "delete", "/v1/jobs/job_nope", {}, 404, ["job_nope"]),
    ("unknown artifact", "get", "/v1/jobs/{model}/artifacts/nope.bin", {}, 404, ["nope.bin"]),
    ("artifact path traversal", "get", "/v1/jobs/{model}/artifacts/..%2F..%2Flbdn.sqlite", {}, (404, 422), []),
    ("bad list filter", "get", "/v1/jobs?status=sleeping", {}, 422, ["status"]),
    ("bad cursor", "get", "/v1/jobs?cursor=abc", {}, 422, ["cursor"]),
    ("unknown model", "get", "/v1/models/job_nope", {}, 404, ["job_nope"]),
    ("certify unknown model", "post", "/v1/models/job_nope/certify", {"json": {"inputs": [GOOD_IMG]}}, 404, ["job_nope"]),
    ("certify a queued job", "post", "/v1/models/{queued}/certify", {"json": {"inputs": [GOOD_IMG]}}, 404, ["trained model"]),
    ("certify wrong content type", "post", CERT, {"content": b"0.5", "headers": {"content-type": "text/csv"}}, 415, ["multipart/form-data"]),
    ("certify no content type", "post", CERT, {"content": b"0.5"}, 415, ["application/json"]),
    ("certify not an image", "post", CERT, {"files": {"files": ("x.png", b"hello, world", "image/png")}}, 422, ["not a PNG or JPEG"]),
    ("certify GIF", "post", CERT, {"files": {"files": ("x.gif", None, "image/gif")}}, 422, ["GIF"]),
    ("certify truncated image", "post", CERT, {"files": {"files": ("x.png", png()[:60], "image/png")}}, 422, ["file 0"]),
    ("certify decompression bomb", "post", CERT, {"files": {"files": ("x.png", bomb(), "image/png")}}, 422, ["decompression"]),
    ("certify wrong image size", "post", CERT, {"files": {"files": ("x.png", png(64, 48), "image/png")}}, 422, ["32x32", "64x48"]),
    ("certify wrong JSON shape", "post", CERT, {"json": {"inputs": [[[0.5] * 32] * 32]}}, 422, ["(3, 32, 32)", "(1, 32, 32)"]),
    ("certify ragged JSON", "post", CERT, {"json": {"inputs": [[1, 2], [3]]}}, 422, ["inputs"]),
    ("certify strings", "post", CERT, {"json": {"inputs": [["a"]]}}, 422, ["inputs"]),
    ("certify empty", "post", CERT, {"json": {"inputs": []}}, 422, ["non-empty"]),
    ("certify NaN", "post", CERT, {"content": b'{"inputs": [[[[NaN]]]]}'.replace(b"[[[[NaN]]]]", str([[[[0.5] * 32] * 31 + [[float("nan")] * 32]] * 3]).replace("nan", "NaN").encode() ), "headers": {"content-type": "application/json"}}, 422, ["NaN or infinite"]),
    ("certify inf in npy", "post", CERT, {"content": npy(np.full((3, 32, 32), np.inf)), "headers": {"content-type": "application/x-npy"}}, 422, ["NaN or infinite"]),
    ("certify pixel out of range", "post", CERT, {"json": {"inputs": [[[[1.5] * 32] * 32] * 3]}}, 422, ["[0, 1]"]),
    ("certify bad scale", "post", CERT, {"json": {"inputs": [GOOD_IMG], "scale": "kelvin"}}, 422, ["scale"]),
    ("certify unknown JSON field", "post", CERT, {"json": {"inputs": [GOOD_IMG], "labels": [1]}}, 422, ["labels"]),
    ("certify pickled npy", "post", CERT, {"content": npy(np.array([{"a": 1}], dtype=object)), "headers": {"content-type": "application/x-npy"}}, 422, ["dtype"]),
    ("certify npy shape bomb", "post", CERT, {"content": shape_bomb(), "headers": {"content-type": "application/x-npy"}}, 422, ["shorter"]),
    ("certify npy wrong shape", "post", CERT, {"files": {"files": ("x.npy", npy(np.zeros((3, 16, 16))), "application/octet-stream")}}, 422, ["(3, 32, 32)"]),
    ("certify too many inputs", "post", CERT, {"content": npy(np.zeros((9, 3, 32, 32), np.uint8)), "headers": {"content-type": "application/x-npy"}}, 413, ["at most 8"]),
    ("certify too many files", "post", CERT, {"files": [("files", (f"{i}.png", png(), "image/png")) for i in range(9)]}, 413, ["at most 8"]),
    ("certify image for the toy", "post", CERT_TOY, {"files": {"files": ("x.png", png(), "image/png")}}, 422, ["feature vectors"]),
    ("certify multipart without files", "post", CERT, {"data": {"scale": "pixel"}, "files": {}}, (415, 422), []),
    # issue 7: inputs that used to answer 500 (the last ones found by tests/service/test_schemathesis.py)
    ("spec model not a string", "post", JOBS, {"json": {"kind": "train", "spec": {**TOY, "model": {}}}}, 422, ["spec.model"]),
    ("certify inputs null", "post", CERT, {"json": {"inputs": None}}, 422, ["inputs", "non-empty list"]),
    ("certify 400-digit integer", "post", CERT_TOY, {"content": b'{"scale": "model", "inputs": [[' + b"9" * 400 + b"]]}", "headers": JSON}, 422, ["inputs", "float32"]),
    ("certify JSON nested 100k deep", "post", CERT, {"content": deep_json(b'{"inputs": ', 100_000), "headers": JSON}, 422, ["body", "nested"]),
    ("job JSON nested 100k deep", "post", JOBS, {"content": deep_json(b'{"kind": "train", "spec": ', 100_000), "headers": JSON}, 422, ["body", "nested"]),
    ("certify npy shape (2**64, 1)", "post", CERT, {"content": npy_header_only("(18446744073709551616, 1)"), "headers": {"content-type": "application/x-npy"}}, 422, ["body", "shorter"]),
    ("certify float64 beyond float32 (JSON)", "post", CERT_TOY, {"json": {"inputs": [[1e39]], "scale": "model"}}, 422, ["input 0", "float32"]),
    ("certify float64 beyond float32 (npy)", "post", CERT_TOY, {"content": npy(np.array([[1.0], [-1e300]])), "headers": {"content-type": "application/x-npy"}}, 422, ["input 1", "float32"]),
    ("data_path with NUL", "post", JOBS, {"json": {"kind": "train", "spec": {**FOLDER, "data_path": "a\u0000b"}}}, 422, ["data_path", "NUL"]),
    ("data_path through ~", "post", JOBS, {"json": {"kind": "train", "spec": {**FOLDER, "data_path": "~/../srv/x"}}}, 422, ["spec.data_path"]),
    ("data_path escaping via ~/..", "post", JOBS, {"json": {"kind": "train", "spec": {**FOLDER, "data_path": "~/../../../srv/x"}}}, 422, ["spec.data_path", "inside"]),
    ("data_path too long", "post", JOBS, {"json": {"kind": "train", "spec": {**FOLDER, "data_path": "a" * 5000}}}, 422, ["spec.data_path"]),
    ("logs offset past 2**63", "get", "/v1/jobs/{queued}/logs?offset=" + HUGE, {}, 422, ["offset", "less than or equal"]),
    ("metrics since_epoch past 2**63", "get", "/v1/jobs/{queued}/metrics?since_epoch=" + HUGE, {}, 422, ["since_epoch", "less than or equal"]),
    ("events after past 2**63", "get", "/v1/jobs/{queued}/events?after=" + HUGE * 3, {}, 422, ["after", "less than or equal"]),
    ("events Last-Event-ID huge", "get", "/v1/jobs/{queued}/events", {"headers": {"Last-Event-ID": HUGE * 3}}, 422, ["Last-Event-ID"]),
    ("list limit huge", "get", "/v1/jobs?limit=" + HUGE, {}, 422, ["limit"]),
]
# fmt: on


@pytest.fixture(scope="module")
def table_client(tmp_path_factory, trained_model):
    """One app for the whole table, with small limits so the size cases are cheap."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from tests.service.conftest import make_settings  # (settings_for is per test: its artifact backend)

    settings = make_settings(tmp_path_factory.mktemp("bad"), max_upload_bytes=256_000, max_certify_inputs=8)
    with TestClient(create_app(settings)) as client:
        app = client.app
        ids = {
            "model": trained_model(app, "local", KWL),
            "toy": trained_model(app, "local", TOY),
            "queued": client.post(JOBS, json={"kind": "train", "spec": TOY}).json()["id"],
        }
        yield client, ids


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, "GIF")
    return buf.getvalue()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(table_client, case):
    client, ids = table_client
    name, method, path, kwargs, status, words = case
    kwargs = dict(kwargs)
    if "json" in kwargs:
        kwargs["json"] = _fill(kwargs["json"], ids)
    if "files" in kwargs and isinstance(kwargs["files"], dict) and "files" in kwargs["files"]:
        fname, content, ctype = kwargs["files"]["files"]
        kwargs["files"] = {"files": (fname, content if content is not None else _gif(), ctype)}
    r = getattr(client, method)(path.format(**ids), **kwargs)
    allowed = status if isinstance(status, tuple) else (status,)
    assert r.status_code in allowed, (name, r.status_code, r.text[:500])
    assert r.headers["content-type"] == "application/problem+json", r.headers["content-type"]
    body = r.json()
    assert body["status"] == r.status_code and body["title"] and body["detail"]
    for word in words:
        assert word in body["detail"], (name, body["detail"])
    assert client.get("/healthz").status_code == 200  # still serving


def _fill(obj, ids):
    if isinstance(obj, dict):
        return {k: _fill(v, ids) for k, v in obj.items()}
    if isinstance(obj, str) and obj.startswith("{") and obj.endswith("}"):
        return obj.format(**ids)
    return obj


def test_good_requests_still_work_after_the_table(table_client):
    client, ids = table_client
    r = client.post(CERT.format(**ids), files={"files": ("x.png", png(), "image/png")})
    assert r.status_code == 200, r.text
    assert math.isfinite(r.json()["results"][0]["radius"])


def test_data_path_is_resolved_once_the_same_way(tmp_path):
    """lipcore's folder_root is what the API checks and what training reads: no `~` expansion,
    no NUL, and (for the service) nothing outside the data dir after `..` and symlinks."""
    from pathlib import Path

    from lipcore.data.image_folder import folder_root

    data = tmp_path / "data"
    (data / "mine").mkdir(parents=True)
    (data / "link").symlink_to(tmp_path)
    assert folder_root("~/x", data) == data / "~" / "x"  # a folder named "~", not the home dir
    assert folder_root("mine", data, confine=True) == data / "mine"
    assert folder_root(str(data / "mine"), data, confine=True) == data / "mine"
    for escaping in ("~/../../x", "../x", "/etc", "link/x", str(Path.home())):
        with pytest.raises(ValueError, match="inside the data dir"):
            folder_root(escaping, data, confine=True)
    with pytest.raises(ValueError, match="NUL"):
        folder_root("a\x00b", data)

"""POST /v1/models/import under abuse (issue 22): a zip bomb is refused from its declared sizes before
anything is inflated; the form's spec is the one spec of an import and passes POST /v1/jobs' data-path
rule; per-tenant import rate and stored bytes are limited across API processes; a deeply nested
`spec` is a 422; an upload in flight at SIGTERM leaves a clean stop and no half-made model."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from bench.abuse_payloads import zip_bomb
from tests.conftest import SHARED
from tests.fakedata import write_folder
from tests.service.conftest import stored_jobs
from tests.waiting import wait_until

TOY_DIR = SHARED / "paper-checkpoints" / "square_wave" / "Toy-Aol-small-gamma5.0"
TOY = {"model": "Toy", "layer": "Aol", "gamma": 5.0}
KWL = {"model": "KWL", "layer": "Aol", "scale": "small", "gamma": 2.0}


def _import(client, data: bytes, spec: dict | str, name: str = "model.ckpt", headers=None):
    return client.post(
        "/v1/models/import",
        files={"checkpoint": (name, data, "application/octet-stream")},
        data={"spec": spec if isinstance(spec, str) else json.dumps(spec)},
        headers=headers or {},
    )


def _high_water_mib() -> float:
    """Peak resident memory of this process (the in-process API), MiB, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_zip_bomb_is_refused_before_inflating(client):
    bomb = zip_bomb(2 * 2**30)  # ~2 MB declaring a deflated 2 GiB storage entry
    assert len(bomb) < 3 * 2**20
    before = _high_water_mib()
    r = _import(client, bomb, TOY)
    assert r.status_code == 413, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    detail = r.json()["detail"]
    assert "declares 2,147,48" in detail and "LBDN_MAX_UPLOAD_BYTES" in detail
    assert "before decompressing" in detail
    # a loose bound only (the refusal's message above is what shows nothing was inflated)
    assert _high_water_mib() - before < 300
    # under the upload limit but far over what a Toy network holds: 422 naming both sizes
    r = _import(client, zip_bomb(8 * 2**20), TOY)
    assert r.status_code == 422, r.text
    assert "declares 8,388,8" in r.json()["detail"] and "refused before loading" in r.json()["detail"]
    assert client.get("/v1/models").json()["items"] == []
    # the real checkpoint of that spec still imports
    assert _import(client, (TOY_DIR / "model.ckpt").read_bytes(), TOY).status_code == 201


def _kwl_safetensors(tmp_path: Path, spec: dict) -> bytes:
    """A model.safetensors of ours (random weights) embedding `spec`."""
    from lipcore.checkpoint import save_model
    from lipcore.models import build
    from lipcore.spec import ExperimentSpec

    es = ExperimentSpec.model_validate(spec)
    path = tmp_path / "model.safetensors"
    save_model(path, build(es), es, classes=[f"c{i}" for i in range(10)], mean=(0.5,) * 3, std=(0.25,) * 3)
    return path.read_bytes()


@pytest.mark.artifacts
def test_import_spec_is_the_forms_and_keeps_the_data_path_rule(client, tmp_path):
    outside = tmp_path / "outside"
    write_folder(outside, {f"c{i}": 1 for i in range(10)}, test={f"c{i}": 1 for i in range(10)})
    shape = {"in_channels": 3, "img_size": 32, "num_classes": 10}
    hostile = {**KWL, "dataset": "image_folder", "data_path": str(outside), **shape}
    data = _kwl_safetensors(tmp_path, hostile)
    # the form repeats the file's spec: the data-path rule of POST /v1/jobs refuses it
    r = _import(client, data, hostile, name="model.safetensors")
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("spec.data_path:") and "inside the data dir" in r.json()["detail"]
    # a harmless form no longer lets the file's own spec win: the contradiction is named
    r = _import(client, data, {**KWL, "dataset": "cifar10"}, name="model.safetensors")
    assert r.status_code == 422, r.text
    assert "contradicts the spec embedded" in r.json()["detail"] and "dataset" in r.json()["detail"]
    assert client.get("/v1/models").json()["items"] == []
    # the same weights with the data in the server's data dir: the form's data_path is the one kept
    data_dir = client.app.state.services.settings.datasets_dir
    write_folder(data_dir / "mine", {f"c{i}": 1 for i in range(10)}, test={f"c{i}": 1 for i in range(10)})
    r = _import(client, data, {**KWL, "dataset": "image_folder", "data_path": "mine"}, name="model.safetensors")
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["data_path"] == "mine"
    # a network-shaping field left to its default still has to agree with the file (gamma 1.0 vs 2.0)
    no_gamma = {k: v for k, v in KWL.items() if k != "gamma"}
    r = _import(client, data, {**no_gamma, "dataset": "image_folder", "data_path": "mine"}, name="model.safetensors")
    assert r.status_code == 422 and "gamma (form 1.0, file 2.0)" in r.json()["detail"]


@pytest.fixture(params=["sqlite", "postgres"])
def own_db(request, tmp_path) -> str:
    """A store of one test on SQLite and on PostgreSQL (the minute's count compares timestamps)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.sqlite'}"
    return request.getfixturevalue("own_pg_url")


@pytest.mark.artifacts
def test_import_rate_and_bytes_are_limited_per_tenant_across_processes(settings_for, tmp_path, add_key, own_db):
    ckpt = (TOY_DIR / "model.ckpt").read_bytes()
    settings = settings_for(tmp_path, database_url=own_db, imports_per_minute=2, max_import_bytes_per_tenant=10 * 2**20)
    # two API processes' apps on one store: the minute's count is the store's
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        alice, bob = add_key(a.app, "alice"), add_key(a.app, "bob")
        h_alice, h_bob = {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}
        assert _import(a, ckpt, TOY, headers=h_alice).status_code == 201
        assert _import(b, ckpt, TOY, headers=h_alice).status_code == 201
        for c in (a, b):
            r = _import(c, ckpt, TOY, headers=h_alice)
            assert r.status_code == 429, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            assert "LBDN_IMPORTS_PER_MINUTE" in r.json()["detail"]
            assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert _import(a, ckpt, TOY, headers=h_bob).status_code == 201  # another tenant is not held back
        # deleting an import does not give its place in the minute back to this process
        mid = a.get("/v1/models", headers=h_bob).json()["items"][0]["id"]
        assert a.delete(f"/v1/jobs/{mid}", headers=h_bob).status_code == 204
        assert _import(a, ckpt, TOY, headers=h_bob).status_code == 201
        assert _import(a, ckpt, TOY, headers=h_bob).status_code == 429

    small = settings_for(tmp_path / "bytes", max_import_bytes_per_tenant=800_000)  # one Toy model: ~0.53 MB
    with TestClient(create_app(small)) as c:
        first = _import(c, ckpt, TOY)
        assert first.status_code == 201
        r = _import(c, ckpt, TOY)
        assert r.status_code == 429 and "LBDN_MAX_IMPORT_BYTES_PER_TENANT" in r.json()["detail"]
        assert "Retry-After" in r.headers
        assert len(c.get("/v1/models").json()["items"]) == 1  # nothing of the refused one was kept
        assert stored_jobs(small) == [first.json()["id"]]
        assert c.delete(f"/v1/jobs/{first.json()['id']}").status_code == 204  # deleting makes room
        assert _import(c, ckpt, TOY).status_code == 201


def test_deeply_nested_spec_is_a_422_naming_spec(client):
    ckpt = (TOY_DIR / "model.ckpt").read_bytes()
    r = _import(client, ckpt, "[" * 100_000)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("spec:")
    r = _import(client, ckpt, "[" * 900)  # short enough to be read, too deep to be parsed
    assert r.status_code == 422 and r.json()["detail"].startswith("spec:")
    assert client.get("/healthz").status_code == 200


@pytest.mark.slow
@pytest.mark.artifacts
def test_sigterm_with_an_upload_in_flight_stops_cleanly(service_factory):

    svc = service_factory("embedded", "sqlite")
    port = int(svc.url.rsplit(":", 1)[1])
    boundary = "lbdnboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="spec"\r\n\r\n{json.dumps(TOY)}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="checkpoint"; filename="model.ckpt"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    ckpt = (TOY_DIR / "model.ckpt").read_bytes()
    tail = f"\r\n--{boundary}--\r\n".encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            (
                f"POST /v1/models/import HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {len(head) + len(ckpt) + len(tail)}\r\n\r\n"
            ).encode()
            + head
            + ckpt[: len(ckpt) // 2]
        )
        # the event loop reads connections in order: once a later request is answered, the upload's
        # headers have been read and its request is being handled (an event, not a delay)
        assert httpx.get(f"{svc.url}/healthz", timeout=60).status_code == 200
        svc.api.proc.send_signal(signal.SIGTERM)
        wait_until("the API to stop", lambda: svc.api.proc.poll() is not None, bound=120)
        answer = sock.recv(65536).decode(errors="replace")
    log = svc.api.text()
    assert "Finished server process" in log, log[-3000:]
    assert "Traceback" not in log and " 500 " not in log, log[-3000:]
    assert answer.startswith("HTTP/1.1 503"), answer  # the client is told to send it again
    assert "retry-after: 10" in answer.lower()
    assert stored_jobs(svc.settings) == []

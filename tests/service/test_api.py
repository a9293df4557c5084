"""The HTTP API without a worker: jobs are created, listed, cancelled and deleted; auth and tenancy;
idempotency; OpenAPI; the API process never imports lipcore's training code."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import update

from core.store import Job, leases, transaction, utcnow

TOY = {"model": "Toy", "layer": "Sandwich", "epochs": 5}
KWL = {"model": "KWL", "layer": "Sandwich", "scale": "small", "dataset": "cifar10", "epochs": 1}


def submit(client, spec=TOY, headers=None):
    return client.post("/v1/jobs", json={"kind": "train", "spec": spec}, headers=headers or {})


@pytest.mark.artifacts
def test_submit_get_list_cancel_delete(client):
    r = submit(client)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued" and job["kind"] == "train" and job["created_at"]
    assert job["spec"]["model"] == "Toy" and job["spec"]["dataset"] == "square_wave"  # resolved spec
    assert client.get(f"/v1/jobs/{job['id']}").json()["id"] == job["id"]
    ids = [submit(client).json()["id"] for _ in range(2)]
    page = client.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["items"]] == ids[::-1] and page["next_cursor"]
    rest = client.get("/v1/jobs", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert [j["id"] for j in rest["items"]] == [job["id"]] and rest["next_cursor"] is None
    assert client.get("/v1/jobs", params={"status": "running"}).json()["items"] == []
    assert client.get(f"/v1/jobs/{job['id']}/metrics").json() == {"job_id": job["id"], "items": []}
    assert client.get(f"/v1/jobs/{job['id']}/logs").json()["lines"] == []
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 409  # not finished yet
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409
    events = client.get(f"/v1/jobs/{job['id']}/events")  # a finished job's stream replays and ends
    assert events.headers["content-type"].startswith("text/event-stream")
    assert "event: state" in events.text and '"cancelled"' in events.text
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 404


def test_idempotency_key(client):
    h = {"Idempotency-Key": "retry-1"}
    a, b = submit(client, headers=h), submit(client, headers=h)
    assert a.status_code == b.status_code == 201 and a.json()["id"] == b.json()["id"]
    assert b.headers.get("Idempotent-Replayed") == "true"
    assert len(client.get("/v1/jobs").json()["items"]) == 1
    other = submit(client, spec={**TOY, "epochs": 6}, headers=h)
    assert other.status_code == 422 and "different request body" in other.json()["detail"]
    assert submit(client, headers={"Idempotency-Key": "retry-2"}).json()["id"] != a.json()["id"]


@pytest.mark.artifacts
def test_keys_and_tenant_isolation(client, add_key, trained_model):
    app = client.app
    open_job = submit(client).json()["id"]  # no key configured yet: the open tenant
    ka, kb = add_key(app, "acme"), add_key(app, "globex")
    A, B = ({"Authorization": f"Bearer {k}"} for k in (ka, kb))
    r = client.get("/v1/jobs")
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
    job = submit(client, headers=A).json()["id"]
    model = trained_model(app, "acme", KWL)
    assert [j["id"] for j in client.get("/v1/jobs", headers=A).json()["items"]] == [model, job]
    assert client.get("/v1/jobs", headers=B).json()["items"] == []
    assert client.get("/v1/models", headers=B).json()["items"] == []
    x = {"inputs": [[[[0.5] * 32] * 32] * 3]}
    for method, path, kw in [
        ("get", f"/v1/jobs/{job}", {}),
        ("get", f"/v1/jobs/{open_job}", {}),
        ("get", f"/v1/jobs/{job}/metrics", {}),
        ("get", f"/v1/jobs/{job}/logs", {}),
        ("get", f"/v1/jobs/{job}/events", {}),
        ("get", f"/v1/jobs/{model}/artifacts", {}),
        ("get", f"/v1/jobs/{model}/artifacts/model.safetensors", {}),
        ("post", f"/v1/jobs/{job}/cancel", {}),
        ("delete", f"/v1/jobs/{model}", {}),
        ("get", f"/v1/models/{model}", {}),
        ("post", f"/v1/models/{model}/certify", {"json": x}),
        ("post", "/v1/jobs", {"json": {"kind": "evaluate", "model_id": model}}),
    ]:
        r = getattr(client, method)(path, headers=B, **kw)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
    # ... while the owner sees all of it
    assert client.get(f"/v1/models/{model}", headers=A).json()["clean_acc"] == 12.5
    assert client.post(f"/v1/models/{model}/certify", headers=A, json=x).status_code == 200
    names = [a["name"] for a in client.get(f"/v1/jobs/{model}/artifacts", headers=A).json()["items"]]
    assert names == ["model.safetensors"]
    ev = client.post("/v1/jobs", headers=A, json={"kind": "evaluate", "model_id": model, "attack": {"n_examples": 10}})
    assert ev.status_code == 201 and ev.json()["attack"]["eps"] == [36, 72, 108]
    # the owner's certify lookups are remembered (api.deps.known_models): never for another tenant,
    # and a deleted model is gone at once
    assert client.post(f"/v1/models/{model}/certify", headers=B, json=x).status_code == 404
    assert client.delete(f"/v1/jobs/{model}", headers=A).status_code == 204
    r = client.post(f"/v1/models/{model}/certify", headers=A, json=x)
    assert r.status_code == 404 and "no trained model" in r.json()["detail"]


def test_health_ready_metrics_openapi(client):
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    submit(client)
    done = submit(client).json()["id"]
    with transaction(client.app.state.services.sessions) as s:  # as a worker would: 42 s of running
        leases.acquire(s, done, "w", 60)
        s.execute(update(Job).where(Job.id == done).values(started_at=utcnow() - timedelta(seconds=42)))
        leases.finish(s, done, "w", "succeeded", result={})
    text = client.get("/metrics").text
    assert 'lbdn_jobs{kind="train",status="queued"} 1.0' in text
    assert 'lbdn_job_duration_seconds_bucket{kind="train",le="30",status="succeeded"} 0.0' in text
    assert 'lbdn_job_duration_seconds_bucket{kind="train",le="60",status="succeeded"} 1.0' in text
    assert 'lbdn_job_duration_seconds_count{kind="train",status="succeeded"} 1.0' in text
    assert 'lbdn_http_requests_total{method="POST",route="/v1/jobs",status="201"}' in text
    spec = client.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            ok = {k: v for k, v in op["responses"].items() if k.startswith("2")}
            assert ok, (method, path)


def test_catalog_serves_the_model_cards(client):
    r = client.get("/v1/catalog")
    assert r.status_code == 200, r.text
    body = r.json()
    cards = {m["name"]: m for m in body["models"]}
    assert set(cards) >= {"DNN", "KWL", "Resnet", "Toy"}
    assert cards["Toy"]["task"] == "regressor" and cards["KWL"]["task"] == "classifier"
    assert cards["KWL"]["layers"][:4] == ["Sandwich", "Orthogon", "Aol", "Plain"]
    assert cards["Resnet"]["scales"] == ["small", "medium", "large", "xlarge"]
    assert cards["DNN"]["forced"]["lln"] is True and cards["Resnet"]["defaults"] == {"layer": "SLL", "scale": "xlarge"}
    families = {f["name"]: f for f in body["families"]}
    assert families["Plain"]["bounded"] is False and families["Sandwich"]["bounded"] is True
    assert {"name": "square_wave", "inputs": "vector"} in body["datasets"]
    op = client.get("/openapi.json").json()["paths"]["/v1/catalog"]["get"]
    assert op["responses"]["401"]["content"]["application/problem+json"]


def test_readyz_reports_an_unreachable_broker(tmp_path, settings_for):
    from fastapi.testclient import TestClient

    from api.main import create_app

    app = create_app(settings_for(tmp_path, broker_url="redis://127.0.0.1:1/0"))
    with TestClient(app) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "broker" in r.json()["detail"]
        job = submit(c)  # the job is kept (queued) for the reaper even though the broker is away
        assert job.status_code == 201 and c.get(f"/v1/jobs/{job.json()['id']}").json()["status"] == "queued"


def test_api_process_never_imports_training_code():
    code = (
        "import sys; import api.main; app = api.main.create_app(); "
        "bad = [m for m in ('lipcore.train', 'lipcore.evaluate', 'lipcore.data', 'worker', 'torch') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr

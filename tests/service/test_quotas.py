"""Quotas and limits: active jobs per tenant (429), a memory ceiling per job from lipcore.cost (422),
and ?attack=true work: slots per tenant and in all (429), cut short by its time budget or when the
client goes away, with the certificates still returned."""

from __future__ import annotations

import re
import socket

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.waiting import wait_until

TOY = {"model": "Toy", "layer": "Sandwich", "epochs": 2}
JOBS = "/v1/jobs"


def _problem(r: httpx.Response, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    for w in words:
        assert w in body["detail"], body["detail"]
    return body


def test_active_jobs_per_tenant(tmp_path, settings_for, add_key):
    from api.main import create_app

    with TestClient(create_app(settings_for(tmp_path, max_active_jobs_per_tenant=3))) as c:
        acme = {"Authorization": f"Bearer {add_key(c.app, 'acme')}"}
        globex = {"Authorization": f"Bearer {add_key(c.app, 'globex')}"}
        first = c.post(JOBS, json={"kind": "train", "spec": TOY}, headers={**acme, "Idempotency-Key": "k1"})
        ids = [first.json()["id"]] + [
            c.post(JOBS, json={"kind": "train", "spec": TOY}, headers=acme).json()["id"] for _ in range(2)
        ]
        r = c.post(JOBS, json={"kind": "train", "spec": TOY}, headers=acme)
        _problem(r, 429, "LBDN_MAX_ACTIVE_JOBS_PER_TENANT", "3")
        assert int(r.headers["Retry-After"]) > 0
        # a replay creates nothing and is answered; another tenant has its own quota
        replay = c.post(JOBS, json={"kind": "train", "spec": TOY}, headers={**acme, "Idempotency-Key": "k1"})
        assert replay.status_code == 201 and replay.json()["id"] == ids[0]
        assert c.post(JOBS, json={"kind": "train", "spec": TOY}, headers=globex).status_code == 201
        # a finished (here: cancelled) job frees its place
        assert c.post(f"{JOBS}/{ids[1]}/cancel", headers=acme).json()["status"] == "cancelled"
        assert c.post(JOBS, json={"kind": "train", "spec": TOY}, headers=acme).status_code == 201


def test_long_toy_jobs_stay_accepted(client):
    r = client.post(JOBS, json={"kind": "train", "spec": {**TOY, "epochs": 100_000}})
    assert r.status_code == 201, r.text


def test_memory_ceiling_refuses_what_cannot_fit(tmp_path, settings_for):
    from api.main import create_app

    huge = {"model": "Resnet", "scale": "xlarge", "dataset": "tiny_imagenet", "train_batch_size": 65_536}
    kwl = {"model": "KWL", "layer": "Sandwich", "scale": "small", "dataset": "cifar10"}
    with TestClient(create_app(settings_for(tmp_path / "a"))) as c:  # the default ceiling
        body = _problem(c.post(JOBS, json={"kind": "train", "spec": huge}), 422, "LBDN_MAX_JOB_MEMORY_GB", "GiB")
        need = float(re.search(r"needs about ([0-9.]+) GiB", body["detail"]).group(1))
        assert need > 1000  # 1.1e9 parameters and 65,536 64x64 images per step
        assert c.post(JOBS, json={"kind": "train", "spec": kwl}).status_code == 201
    with TestClient(create_app(settings_for(tmp_path / "b", max_job_memory_gb=0.5))) as c:
        _problem(c.post(JOBS, json={"kind": "train", "spec": kwl}), 422, "LBDN_MAX_JOB_MEMORY_GB (0.5 GiB)")
        small = c.post(JOBS, json={"kind": "train", "spec": {**kwl, "train_batch_size": 8, "test_batch_size": 8}})
        assert small.status_code == 201, small.text  # the batches are what made it too big
        assert c.post(JOBS, json={"kind": "train", "spec": TOY}).status_code == 201


def test_attack_past_its_time_budget_still_returns_the_certificates(tmp_path, settings_for, trained_model):
    from api.main import create_app

    settings = settings_for(tmp_path, certify_attack_steps=10**7, certify_attack_timeout_s=0.2)
    with TestClient(create_app(settings)) as c:
        toy = trained_model(c.app, "local", TOY)
        r = c.post(f"/v1/models/{toy}/certify?attack=true", json={"inputs": [[0.3], [-1.2]], "scale": "model"})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["attack"]["cut_short"] is True and out["attack"]["reason"] == "time budget"
        assert 1 <= out["attack"]["steps_run"] < 10**7
        for item in out["results"]:
            assert item["radius"] >= 0 and item["margin"] is not None
            if item["attack_radius"] is not None:  # a real adversarial example: never inside the certificate
                assert item["radius"] <= item["attack_radius"] + 1e-9
        plain = c.post(f"/v1/models/{toy}/certify", json={"inputs": [[0.3]], "scale": "model"}).json()
        assert plain["attack"] is None


def _attacks_active(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return float(re.search(r"^lbdn_certify_attacks_active (\S+)$", text, re.MULTILINE).group(1))


@pytest.mark.slow
def test_attack_slots_and_cancel_on_disconnect(service_factory, add_key):
    from api.main import create_app
    from tests.service.conftest import save_trained_model

    svc = service_factory(
        "embedded",
        "sqlite",
        certify_attack_steps=10**8,  # never ends by itself: only a disconnect can stop it here
        certify_attack_timeout_s=3600,
        certify_attacks_per_tenant=1,
        certify_attacks_total=1,
    )
    app = create_app(svc.settings)  # not served: only its store handles, to add keys and a model
    acme, globex = add_key(app, "acme"), add_key(app, "globex")
    toy = save_trained_model(app, "acme", TOY)
    toy_g = save_trained_model(app, "globex", TOY)
    app.state.services.engine.dispose()
    host, port = svc.url.removeprefix("http://").split(":")
    body = b'{"inputs": [[0.3]], "scale": "model"}'
    raw = (
        f"POST /v1/models/{toy}/certify?attack=true HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {acme}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sock = socket.create_connection((host, int(port)))
    try:
        sock.sendall(raw)
        wait_until("the first attack running", lambda: _attacks_active(svc.url) == 1)
        url = f"{svc.url}/v1/models/{toy}/certify"
        again = httpx.post(
            f"{url}?attack=true",
            json={"inputs": [[0.1]], "scale": "model"},
            headers={"Authorization": f"Bearer {acme}"},
            timeout=60,
        )
        _problem(again, 429, "LBDN_CERTIFY_ATTACKS_PER_TENANT")
        assert int(again.headers["Retry-After"]) > 0
        other = httpx.post(
            f"{svc.url}/v1/models/{toy_g}/certify?attack=true",
            json={"inputs": [[0.1]], "scale": "model"},
            headers={"Authorization": f"Bearer {globex}"},
            timeout=60,
        )
        _problem(other, 429, "LBDN_CERTIFY_ATTACKS_TOTAL")  # another tenant, but the server's slot is taken
        no_attack = httpx.post(
            url, json={"inputs": [[0.1]], "scale": "model"}, headers={"Authorization": f"Bearer {acme}"}, timeout=60
        )
        assert no_attack.status_code == 200 and no_attack.json()["attack"] is None  # certify is not limited
    finally:
        sock.close()  # the client goes away: the attack must stop and give its slot back
    wait_until("the attack cancelled after its client disconnected", lambda: _attacks_active(svc.url) == 0)
    log = svc.api.text()
    assert "Traceback" not in log, log[-3000:]

"""Auth never opens by accident: revoking every key leaves /v1 closed, the open mode is a choice
(or loopback before the first key), and /metrics, /readyz answer to the token or loopback only."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from core.store import keys, transaction
from tests.waiting import wait_until

TOY = {"model": "Toy", "layer": "Sandwich", "epochs": 2}


def _v1_requests(app, job_id: str) -> list[tuple[str, str]]:
    """(method, path) of every /v1 operation in the OpenAPI document, path parameters filled in."""
    out = []
    for path, ops in app.openapi()["paths"].items():
        if path.startswith("/v1"):
            filled = re.sub(r"\{(job_id|model_id)\}", job_id, path).replace("{name}", "model.safetensors")
            out += [(method.upper(), filled) for method in ops if method not in ("parameters", "head")]
    return out


def test_revoking_every_key_leaves_every_v1_route_closed(client, add_key, trained_model):
    app = client.app
    assert client.get("/v1/jobs").status_code == 200  # loopback, no key ever made: open by default
    secret = add_key(app, "acme")
    model = trained_model(app, "acme", TOY)
    auth = {"Authorization": f"Bearer {secret}"}
    assert client.get(f"/v1/jobs/{model}", headers=auth).status_code == 200
    with transaction(app.state.services.sessions) as s:
        for k in keys.list_keys(s):
            assert keys.revoke_key(s, k.id)
    # the API remembers a key's tenant for LBDN_KEY_CACHE_S (1 s): wait for the revocation to show
    wait_until(
        "the revoked key refused",
        lambda: client.get(f"/v1/jobs/{model}", headers=auth).status_code == 401,
        bound=60 * app.state.services.settings.key_cache_s + 5,
        every=0.05,
    )
    routes = _v1_requests(app, model)
    assert len(routes) >= 10, routes
    for method, path in routes:
        for headers in ({}, auth):  # no key, and the revoked one
            r = client.request(method, path, headers=headers, json={"kind": "train", "spec": TOY})
            assert r.status_code == 401, (method, path, headers, r.status_code, r.text[:300])
            assert r.headers["content-type"] == "application/problem+json"
            assert r.headers["www-authenticate"] == "Bearer"
            assert "Authorization" in r.json()["detail"]


def test_keys_mode_without_any_key_answers_401(tmp_path, settings_for):
    from api.main import create_app

    with TestClient(create_app(settings_for(tmp_path, auth="keys"))) as c:
        r = c.get("/v1/jobs")
        assert r.status_code == 401 and "lbdn keys create" in r.json()["detail"]
        assert c.post("/v1/jobs", json={"kind": "train", "spec": TOY}).status_code == 401


def test_beyond_loopback_the_default_is_keys(tmp_path, settings_for):
    from api.auth import auth_mode
    from api.main import create_app

    settings = settings_for(tmp_path, host="0.0.0.0")
    assert auth_mode(settings) == "keys"
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/jobs").status_code == 401


def test_open_mode_only_when_chosen(tmp_path, settings_for, add_key):
    from api.auth import listen_problem
    from api.main import create_app

    # chosen on loopback: open even after keys exist (a bearer key still names its tenant)
    with TestClient(create_app(settings_for(tmp_path / "a", auth="none"))) as c:
        secret = add_key(c.app, "acme")
        assert c.get("/v1/jobs").status_code == 200
        assert c.get("/v1/jobs", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
        assert c.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    # never beyond loopback: refused before anything listens
    for host in ("0.0.0.0", "192.168.1.7", "::"):
        wide = settings_for(tmp_path / "b", auth="none", host=host)
        assert "LBDN_AUTH=none" in listen_problem(wide)
        with pytest.raises(RuntimeError, match="loopback"):
            create_app(wide)
    # the loopback default closes for good at the first key
    with TestClient(create_app(settings_for(tmp_path / "c"))) as c:
        assert c.get("/v1/jobs").status_code == 200
        add_key(c.app, "acme")
        assert c.get("/v1/jobs").status_code == 401


def test_metrics_and_readyz_answer_loopback_or_the_token(tmp_path, settings_for):
    from api.main import create_app

    app = create_app(settings_for(tmp_path / "a"))
    with TestClient(app, client=("203.0.113.5", 4000)) as remote:
        for path in ("/metrics", "/readyz"):
            r = remote.get(path)
            assert r.status_code == 403 and "LBDN_METRICS_TOKEN" in r.json()["detail"], r.text
        assert remote.get("/healthz").status_code == 200
    with TestClient(app, client=("127.0.0.1", 4000)) as local:
        assert local.get("/metrics").status_code == 200
    token = "t" * 32
    app = create_app(settings_for(tmp_path / "b", metrics_token=token))
    for peer in (("203.0.113.5", 4000), ("127.0.0.1", 4000)):  # with a token, loopback needs it too
        with TestClient(app, client=peer) as c:
            assert c.get("/metrics").status_code == 401
            assert c.get("/metrics", headers={"Authorization": "Bearer " + "u" * 32}).status_code == 401
            r = c.get("/metrics", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200 and "lbdn_http_requests" in r.text

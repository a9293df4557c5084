"""The drill across hosts (bench/host_drill.py), shorter: API on host A, workers on B and C, each its
own LBDN_HOME, sharing only a moto S3 server, PostgreSQL and Redis. B is killed mid-run; C finishes
the job from B's stored checkpoint; A serves its files, certify and export, and deletes its objects."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from bench.host_drill import drill_ok, run_drill, s3_kwargs, s3_settings
from core.artifacts import open_store
from tests.service.test_artifacts import s3_endpoint  # noqa: F401  (the moto server fixture)

EPOCHS = 5


@pytest.mark.slow
def test_a_job_killed_on_one_host_finishes_on_another(tmp_path: Path, s3_endpoint, own_pg_url, redis_url) -> None:  # noqa: F811
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"s3://lbdn/hosts-{secrets.token_hex(3)}"
    shared = {
        **s3_settings(s3_endpoint, url),
        "LBDN_DATABASE_URL": own_pg_url,
        "LBDN_BROKER_URL": redis_url,
        "LBDN_QUEUE_PREFIX": f"t{secrets.token_hex(4)}.",
        "port": str(port),
    }
    store = open_store(url, tmp_path / "unused", tmp_path / "cache", 1 << 30, **s3_kwargs(s3_endpoint))
    report = run_drill(tmp_path / "drill", shared, EPOCHS, store)
    print(report)
    assert drill_ok(report, EPOCHS) == []
    assert report["attempts"] == 2 and report["b_scratch"] and not report["c_scratch_left"]
    assert {"model.safetensors", "checkpoint.safetensors", "metrics.json", "summary.json", "log.txt"} <= set(
        report["artifacts"]
    )
    assert report["a_cache_files"] >= 1  # A certified from its cached copy, not a folder of B or C


def test_the_api_serves_a_model_from_s3_alone(tmp_path: Path, s3_endpoint, settings_for) -> None:  # noqa: F811
    """Import, list, streamed download, certify, export and delete on the S3 backend, in-process:
    nothing of the model is in the API's LBDN_HOME but its download cache."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from tests.service.test_import_metadata import import_file, toy_file

    url = f"s3://lbdn/api-{secrets.token_hex(3)}"
    kw = s3_kwargs(s3_endpoint)
    settings = settings_for(
        tmp_path,
        artifacts=url,
        s3_endpoint=kw["endpoint"],
        s3_region=kw["region"],
        s3_access_key_id=kw["access_key_id"],
        s3_secret_access_key=kw["secret_access_key"],
    )
    store = open_store(url, tmp_path / "unused", tmp_path / "cache", 1 << 30, **kw)
    data = toy_file(tmp_path)
    with TestClient(create_app(settings)) as client:
        made = import_file(client, data)
        assert made.status_code == 201, made.text
        model = made.json()["id"]
        assert [a.name for a in store.list(model)] == ["model.safetensors"]
        assert not (settings.jobs_dir / model).exists()  # in the bucket, not on this host
        items = client.get(f"/v1/jobs/{model}/artifacts").json()["items"]
        size = store.list(model)[0].size
        assert [(i["name"], i["size"]) for i in items] == [("model.safetensors", size)]
        got = client.get(f"/v1/jobs/{model}/artifacts/model.safetensors")
        assert got.status_code == 200 and int(got.headers["content-length"]) == size == len(got.content)
        assert client.get(f"/v1/jobs/{model}/artifacts/nope.json").status_code == 404
        inputs = {"inputs": [[0.1], [-1.0]], "scale": "model"}
        assert client.post(f"/v1/models/{model}/certify", json=inputs).status_code == 200
        export = client.get(f"/v1/models/{model}/export", params={"format": "onnx"})
        assert export.status_code in (200, 501)
        cached = [p.name for p in (settings.home / "artifact-cache").rglob("*") if p.is_file()]
        assert cached.count("model.safetensors") == 1  # downloaded once for certify and export
        assert client.delete(f"/v1/jobs/{model}").status_code == 204
        assert store.list(model) == []
        assert client.post(f"/v1/models/{model}/certify", json=inputs).status_code == 404

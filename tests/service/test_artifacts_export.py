"""Export on a second API host (issue 19 item 1): a host that never saw the model rebuilds the export
from the stored model, downloading it once into its cache keyed by the object's ETag; a model
object rewritten in the store (a new ETag) is downloaded and exported afresh."""

from __future__ import annotations

import secrets
from pathlib import Path

from bench.host_drill import s3_kwargs
from core.artifacts import open_store
from tests.service.test_artifacts import s3_endpoint  # noqa: F401  (the moto server fixture)
from tests.service.test_import_metadata import import_file, toy_file


def _cached(settings, name: str) -> list[Path]:
    return sorted(p for p in (settings.home / "artifact-cache").rglob(name) if p.is_file())


def test_a_second_api_host_exports_from_the_stored_model_once(tmp_path, s3_endpoint, own_pg_url, settings_for):  # noqa: F811
    from fastapi.testclient import TestClient

    from api.main import create_app

    url, kw = f"s3://lbdn/export-{secrets.token_hex(3)}", s3_kwargs(s3_endpoint)
    s3 = {"artifacts": url, **{f"s3_{k}": v for k, v in kw.items()}, "database_url": own_pg_url}
    host_a, host_b = settings_for(tmp_path / "a", **s3), settings_for(tmp_path / "b", **s3)
    store = open_store(url, tmp_path / "unused", tmp_path / "cache", 1 << 30, **kw)
    export = {"format": "onnx"}
    with TestClient(create_app(host_a)) as a, TestClient(create_app(host_b)) as b:
        model = import_file(a, toy_file(tmp_path)).json()["id"]
        on_a = a.get(f"/v1/models/{model}/export", params=export)
        assert on_a.status_code == 200
        assert [x.name for x in store.list(model)] == ["model.onnx", "model.safetensors"]
        assert _cached(host_b, "*") == []  # B has nothing of the model yet
        on_b = b.get(f"/v1/models/{model}/export", params=export)
        assert on_b.status_code == 200 and on_b.content == on_a.content
        [weights], [onnx] = _cached(host_b, "model.safetensors"), _cached(host_b, "model.onnx")
        stamp = onnx.stat().st_mtime_ns
        assert b.get(f"/v1/models/{model}/export", params=export).content == on_a.content
        # neither downloaded nor exported again: the same cached files
        assert _cached(host_b, "model.safetensors") == [weights] and onnx.stat().st_mtime_ns == stamp

        other = tmp_path / "other.safetensors"
        other.write_bytes(toy_file(tmp_path, model=_toy_with_seed(1)))
        store.put(model, "model.safetensors", other)  # the object replaced: a new ETag
        fresh = b.get(f"/v1/models/{model}/export", params=export)
        assert fresh.status_code == 200 and fresh.content != on_a.content
        assert len(_cached(host_b, "model.safetensors")) == 2  # one copy per object version


def _toy_with_seed(seed: int):
    import torch

    from lipcore.models import build
    from lipcore.spec import ExperimentSpec
    from tests.service.test_import_metadata import TOY

    torch.manual_seed(seed)
    return build(ExperimentSpec.model_validate(TOY))

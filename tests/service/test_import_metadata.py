"""POST /v1/models/import of a `model.safetensors` whose metadata is wrong: a 422 naming the field
(issue 22), nothing saved, and the tenant's model list keeps answering. These were 500s (with the
model saved and `GET /v1/models` answering 500 from then on) or a 201 whose every certify was 500."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.service.conftest import stored_jobs

TOY = {"model": "Toy", "layer": "Sandwich", "gamma": 2.0}


def toy_file(
    tmp_path: Path, *, classes=(), mean=(0.0,), std=(1.0,), model: torch.nn.Module | None = None, spec=None
) -> bytes:
    """The bytes of a model.safetensors of a Toy (Toy-Sandwich unless `spec` and `model` are given)
    with the metadata fields given as is."""
    from lipcore.models import build
    from lipcore.spec import ExperimentSpec

    spec = ExperimentSpec.model_validate(spec or TOY)
    torch.manual_seed(0)
    model = model if model is not None else build(spec)
    meta = {
        "format": "lbdn-model/1",
        "spec": spec.model_dump_json(),
        "classes": json.dumps(classes if not isinstance(classes, tuple) else list(classes)),
        "mean": json.dumps(mean if not isinstance(mean, tuple) else list(mean)),
        "std": json.dumps(std if not isinstance(std, tuple) else list(std)),
    }
    path = tmp_path / "model.safetensors"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path), meta)
    return path.read_bytes()


def import_file(client, data: bytes, spec: dict | None = None):
    return client.post(
        "/v1/models/import",
        files={"checkpoint": ("model.safetensors", data, "application/octet-stream")},
        data={"spec": json.dumps(spec or TOY)},
    )


def _model_files(settings) -> list[str]:
    return stored_jobs(settings)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("classes", 5, "list of strings"),
        ("mean", 5, "finite numbers"),
        ("classes", [1, 2], "list of strings"),
        ("classes", [None], "list of strings"),
        ("std", ["x"], "finite numbers"),
        ("std", [-1.0], "> 0"),
    ],
    ids=["classes=5", "mean=5", "classes=[1,2]", "classes=[null]", "std=[x]", "std=[-1]"],
)
@pytest.mark.artifacts
def test_bad_metadata_is_a_422_naming_the_field_and_saves_nothing(client, settings, tmp_path, field, value, words):
    before = _model_files(settings)
    r = import_file(client, toy_file(tmp_path, **{field: value}))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert f"'{field}'" in detail and words in detail, detail
    assert _model_files(settings) == before  # nothing saved
    models = client.get("/v1/models")
    assert models.status_code == 200 and models.json()["items"] == []


@pytest.mark.artifacts
def test_good_metadata_imports_and_certifies(client, tmp_path):
    r = import_file(client, toy_file(tmp_path, std=(50.0,)))
    assert r.status_code == 201, r.text
    model_id = r.json()["id"]
    assert [m["id"] for m in client.get("/v1/models").json()["items"]] == [model_id]
    res = client.post(f"/v1/models/{model_id}/certify", json={"inputs": [[0.3]], "scale": "pixel"})
    assert res.status_code == 200, res.text
    (item,) = res.json()["results"]
    # the Toy's inputs are not normalised pixels: its std is not applied, and neither is it to the radius
    assert item["radius_pixel"] == item["radius"] > 0

"""POST /v1/models/{id}/certify against saved models: radii follow lipcore's certificates, in both
model-input and pixel space, whatever the upload format."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.artifacts  # every test certifies a stored model: on both backends

KWL = {"model": "KWL", "layer": "Sandwich", "scale": "small", "dataset": "cifar10", "epochs": 1, "gamma": 2.0}
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
CLASSES = [f"c{i}" for i in range(10)]


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def kwl(client, trained_model):
    return trained_model(client.app, "local", KWL, classes=CLASSES, mean=MEAN, std=STD)


def test_png_json_and_npy_agree_with_lipcore(client, kwl):
    from lipcore.checkpoint import load_model

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    x = pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255
    files = [("files", (f"{i}.png", _png(p), "image/png")) for i, p in enumerate(pixels)]
    by_png = client.post(f"/v1/models/{kwl}/certify", files=files).json()
    by_json = client.post(f"/v1/models/{kwl}/certify", json={"inputs": x.tolist()}).json()
    buf = io.BytesIO()
    np.save(buf, x)
    by_npy = client.post(
        f"/v1/models/{kwl}/certify", content=buf.getvalue(), headers={"content-type": "application/x-npy"}
    ).json()
    assert by_png["input_shape"] == [3, 32, 32]
    bound = by_png["lipschitz_bound"]
    assert (bound["gamma"], bound["kind"]) == (2.0, "sqrt2*gamma")
    assert 0 < bound["verified"] <= 2.0 * (1 + 1e-9) and bound["used"] == max(2.0, bound["verified"])
    loaded = load_model(client.app.state.services.artifacts.local_path(kwl, "model.safetensors"))
    xm = (torch.from_numpy(x) - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = loaded.model(xm).double()
    for res in (by_png, by_json, by_npy):
        for i, r in enumerate(res["results"]):
            assert np.allclose(r["logits"], logits[i].numpy(), atol=1e-5)
            top2 = np.sort(r["logits"])[-2:]
            assert r["predicted"] == int(np.argmax(r["logits"])) and r["class_name"] == CLASSES[r["predicted"]]
            assert math.isclose(r["margin"], top2[1] - top2[0], rel_tol=1e-6)
            # the float64 forward's rounding bound (~1e-8 here) comes off the margin (lipcore.certify)
            plain = r["margin"] / (math.sqrt(2) * bound["used"])
            assert plain * (1 - 1e-4) <= r["radius"] <= plain
            assert math.isclose(r["radius_pixel"], r["radius"] * min(STD), rel_tol=1e-9)
            assert r["attack_radius"] is None
    # loaded once per certify process at most, then served from its LRU
    assert (
        1
        <= client.app.state.services.certify_pool.model_loads
        <= client.app.state.services.settings.certify_concurrency
    )


def test_attack_brackets_the_certificate(client, kwl):
    client.app.state.services.settings.certify_attack_steps = 20  # enough for a bracket, cheap on a CPU
    x = np.random.default_rng(1).random((2, 3, 32, 32)).tolist()
    res = client.post(f"/v1/models/{kwl}/certify", params={"attack": "true"}, json={"inputs": x}).json()
    for r in res["results"]:
        assert r["attack_radius"] is not None and r["radius"] <= r["attack_radius"] + 1e-6
        # the perturbation measured in pixel space lies between its model-space norm times min/max std
        pixel = r["attack_radius_pixel"]
        assert r["attack_radius"] * min(STD) * (1 - 1e-6) <= pixel <= r["attack_radius"] * max(STD) * (1 + 1e-6)
        assert r["radius_pixel"] <= pixel + 1e-6


def test_single_output_toy_and_unbounded_models(client, trained_model):
    toy = trained_model(client.app, "local", {"model": "Toy", "layer": "Sandwich", "epochs": 1, "gamma": 4.0})
    res = client.post(f"/v1/models/{toy}/certify", json={"inputs": [[0.1], [-1.0]], "scale": "model"}).json()
    bound = res["lipschitz_bound"]
    assert (bound["gamma"], bound["kind"]) == (4.0, "gamma (single output)")
    assert 0 < bound["verified"] <= 4.0 * (1 + 1e-9) and bound["used"] == max(4.0, bound["verified"])
    for r in res["results"]:
        (f,) = r["logits"]
        assert r["predicted"] == int(f > 0.5) and math.isclose(r["margin"], abs(f - 0.5), rel_tol=1e-9)
        assert math.isclose(r["radius"], r["margin"] / 4.0, rel_tol=1e-9)
    plain = trained_model(client.app, "local", {"model": "Toy", "layer": "Plain", "epochs": 1})
    r = client.post(f"/v1/models/{plain}/certify", json={"inputs": [[0.1]], "scale": "model"})
    assert r.status_code == 422 and "no Lipschitz bound" in r.json()["detail"]

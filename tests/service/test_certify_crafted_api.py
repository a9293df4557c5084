"""POST /v1/models/{id}/certify of imported crafted weights (issue 21): a NaN bound certifies
nothing (it was answered with gamma and positive radii), and no certified point flips under PGD at
0.999 x its radius when the attacked points are sent back through the same route."""

from __future__ import annotations

import math

import pytest
import torch

from lipcore.attack import pgd_l2
from tests.service.test_import_metadata import import_file, toy_file
from tests.test_certify_crafted import crafted_toy

pytestmark = pytest.mark.slow  # (the module's app and its certify process start once: 5-12 s)


def _import_toy(client, tmp_path, model) -> str:
    spec = {"model": "Toy", "layer": model.layer, "gamma": model.gamma}
    r = import_file(client, toy_file(tmp_path, model=model, spec=spec), spec)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_nan_bound_is_no_certificate(shared_client, tmp_path):
    client = shared_client  # each test certifies only the model it imports
    from lipcore.models import Toy

    torch.manual_seed(0)
    model = Toy("Sandwich", 2.0).eval()
    first = model.body[0]
    with torch.no_grad():
        j = int(torch.nonzero(first.effective()[1][:, 0] < 0)[0, 0])
        first.psi[j] = -800.0  # exp(800) overflows: the verified bound is NaN
    model_id = _import_toy(client, tmp_path, model)
    res = client.post(f"/v1/models/{model_id}/certify", json={"inputs": [[0.05]], "scale": "model"})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["lipschitz_bound"]["verified"] is None and body["lipschitz_bound"]["used"] is None
    assert [r["radius"] for r in body["results"]] == [0.0]
    assert [r["radius_pixel"] for r in body["results"]] == [0.0]


@pytest.mark.parametrize("seed", range(4))
def test_no_certified_point_flips_through_the_api(shared_client, tmp_path, seed):
    client = shared_client  # each test certifies only the model it imports
    from lipcore.certify import float64_model

    model = crafted_toy(seed, 1, 1)
    model_id = _import_toy(client, tmp_path, model)
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None]
    res = client.post(f"/v1/models/{model_id}/certify", json={"inputs": x.tolist(), "scale": "model"})
    assert res.status_code == 200, res.text
    results = res.json()["results"]
    radius = torch.tensor([r["radius"] for r in results], dtype=torch.float64)
    pred = torch.tensor([r["predicted"] for r in results])
    keep = radius > 0
    if not bool(keep.any()):
        return
    xa, pa, ra = x[keep], pred[keep], radius[keep]
    m64 = float64_model(model)
    adv = pgd_l2(m64, xa, pa, 0.999 * ra, steps=40, restarts=2, generator=torch.Generator().manual_seed(seed))
    # 1-D inputs: both ends of each certified interval too
    ends = torch.cat([adv, xa - 0.999 * ra[:, None], xa + 0.999 * ra[:, None]])
    again = client.post(f"/v1/models/{model_id}/certify", json={"inputs": ends.tolist(), "scale": "model"})
    assert again.status_code == 200, again.text
    got = [r["predicted"] for r in again.json()["results"]]
    assert got == pa.tolist() * 3
    assert all(math.isfinite(r["radius"]) for r in results)

"""Certificates: the formulas, ties and NaNs, and attacks that must never beat a certified radius."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lipcore import layers as L
from lipcore.attack import decision, minimal_adversarial_l2, pgd_l2
from lipcore.certify import certified_accuracy, certify, model_certificate, pixel_radius
from lipcore.models import Toy
from lipcore.models.base import LipschitzNet


def test_radius_is_margin_over_sqrt2_gamma() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 4.0]])
    cert = certify(logits, gamma=2.0)
    assert cert.predicted.tolist() == [1, 2]
    assert cert.runner_up.tolist() == [2, 0]
    assert cert.margin.tolist() == [1.0, 4.0]
    assert cert.radius.tolist() == pytest.approx([1 / (math.sqrt(2) * 2), 4 / (math.sqrt(2) * 2)], rel=1e-15)
    assert cert.radius.dtype == torch.float64


def test_ties_give_radius_zero_and_first_index() -> None:
    cert = certify(torch.tensor([[2.0, 2.0, 1.0], [5.0, 5.0, 5.0]]), gamma=1.0)
    assert cert.predicted.tolist() == [0, 0]
    assert cert.radius.tolist() == [0.0, 0.0]


def test_non_finite_logits_are_not_certified() -> None:
    cert = certify(torch.tensor([[math.nan, 1.0], [math.inf, 0.0], [1.0, 0.0]]), gamma=1.0)
    assert cert.predicted.tolist() == [-1, -1, 0]
    assert cert.radius.tolist()[:2] == [0.0, 0.0]
    assert math.isnan(cert.margin[0])
    acc = certified_accuracy(torch.tensor([[math.nan, 1.0]]), torch.tensor([1]), 1.0, [0.0])
    assert acc == {0.0: 0.0}


def test_lln_radius_uses_row_distances() -> None:
    w = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]]), dim=1)
    logits = torch.tensor([[3.0, 1.0, 2.5]])
    cert = certify(logits, 2.0, lln_weight=w)
    pair = [(3.0 - 1.0) / (2 * (w[0] - w[1]).norm()), (3.0 - 2.5) / (2 * (w[0] - w[2]).norm())]
    assert pair[0] < pair[1]  # class 1 is closer in radius although class 2 has the larger logit
    assert cert.radius.item() == pytest.approx(pair[0].item(), rel=1e-6)
    assert cert.runner_up.item() == 1
    assert cert.margin.item() == 2.0


def test_identical_lln_rows_never_flip() -> None:
    w = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    cert = certify(torch.tensor([[2.0, 1.0, 0.0]]), 1.0, lln_weight=w)
    assert cert.runner_up.item() == 2  # class 1 differs from class 0 by a constant bias only
    assert cert.radius.item() == pytest.approx(2.0 / math.sqrt(2))


def test_single_output_threshold_certificate() -> None:
    cert = certify(torch.tensor([[0.9], [0.2], [0.5]]), gamma=4.0)
    assert cert.predicted.tolist() == [1, 0, 0]
    assert cert.radius.tolist() == pytest.approx([0.1, 0.075, 0.0])


def test_no_bound_no_certificate() -> None:
    with pytest.raises(ValueError, match="no Lipschitz bound"):
        certify(torch.zeros(1, 3), None)


def test_pixel_radius_uses_smallest_std() -> None:
    assert pixel_radius(1.0, (0.2470, 0.2435, 0.2616)) == pytest.approx(0.2435)
    assert pixel_radius(0.5, None) == 0.5


# ---- attacks against trained models ---------------------------------------------------------

class Mlp(LipschitzNet):
    def __init__(self, gamma: float, lln: bool) -> None:
        super().__init__(gamma)
        g = self.sqrt_gamma
        head = [L.SandwichFc(32, 16, scale=g), L.LinearNormalized(16, 3)] if lln else [L.SandwichLin(32, 3, scale=g)]
        self.body = torch.nn.Sequential(L.SandwichFc(2, 32, scale=g if not lln else g), L.SandwichFc(32, 32), *head)


def blobs(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.tensor([[0.0, 1.0], [-1.0, -0.6], [1.0, -0.6]])
    y = torch.randint(0, 3, (n,), generator=gen)
    return centres[y] + 0.35 * torch.randn(n, 2, generator=gen), y


@pytest.fixture(scope="module", params=[False, True], ids=["sqrt2", "lln"])
def trained_mlp(request) -> Mlp:
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(1)
    model = Mlp(gamma=2.0, lln=request.param)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        x, y = blobs(128, gen)
        loss = F.multi_margin_loss(model(x), y, margin=0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_trained_model_is_accurate_and_certified(trained_mlp) -> None:
    x, y = blobs(400, torch.Generator().manual_seed(2))
    cert = model_certificate(trained_mlp, x)
    assert (cert.predicted == y).float().mean() > 0.85
    assert (cert.radius > 0.1).float().mean() > 0.3


def test_pgd_never_beats_a_certificate(trained_mlp) -> None:
    x, _ = blobs(300, torch.Generator().manual_seed(3))
    cert = model_certificate(trained_mlp, x)
    label = cert.predicted
    inside = pgd_l2(trained_mlp, x, label, (cert.radius * 0.999).float(), steps=100, restarts=3,
                    generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (decision(trained_mlp(inside)) == label).all()
    # ...while the same attack, allowed twice the certified radius plus the bound's slack, does win:
    outside = pgd_l2(trained_mlp, x, label, (cert.radius * 3 + 0.05).float(), steps=100, restarts=1)
    with torch.no_grad():
        assert (decision(trained_mlp(outside)) != label).float().mean() > 0.2


def test_minimal_adversarial_brackets_the_certificate(trained_mlp) -> None:
    x, _ = blobs(200, torch.Generator().manual_seed(4))
    cert = model_certificate(trained_mlp, x)
    adv = minimal_adversarial_l2(trained_mlp, x, steps=300, init_radius=0.5)
    found = adv.radius
    with torch.no_grad():  # every reported radius is a real adversarial example of that size
        ok = torch.isfinite(found)
        assert (decision(trained_mlp(x[ok] + adv.delta[ok])) != cert.predicted[ok]).all()
        torch.testing.assert_close(adv.delta[ok].norm(dim=1).double(), found[ok])
    finite = torch.isfinite(found)
    assert finite.float().mean() > 0.9
    assert (found[finite] >= cert.radius[finite] * (1 - 1e-6)).all()
    # the bracket is meaningful: a sandwich net's certificate is within a small factor of the attack
    assert (found[finite] / cert.radius[finite].clamp_min(1e-9)).median() < 4


def test_toy_regression_certificate_holds_on_a_dense_grid() -> None:
    """1-D: check every point of a fine grid inside each certified interval."""
    torch.manual_seed(0)
    model = Toy("Sandwich", gamma=5.0)
    x = torch.linspace(-2, 2, 300)[:, None]
    y = ((x <= -1) | ((x > 0) & (x <= 1))).float()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    probes = torch.linspace(-1.9, 1.9, 40)[:, None]
    cert = model_certificate(model, probes)
    assert (cert.radius > 0).any()
    with torch.no_grad():
        for xi, r, label in zip(probes[:, 0], cert.radius, cert.predicted):
            grid = xi + torch.linspace(-1, 1, 2001)[:, None] * float(r) * 0.9999
            assert (decision(model(grid)) == label).all()

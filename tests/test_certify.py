"""Certificates: the formulas, ties and NaNs, and attacks that must never beat a certified radius."""

from __future__ import annotations

import copy
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
    cert = certify(logits, gamma=2.0, lln_weight=None)
    assert cert.predicted.tolist() == [1, 2]
    assert cert.runner_up.tolist() == [2, 0]
    assert cert.margin.tolist() == [1.0, 4.0]
    assert cert.radius.tolist() == pytest.approx([1 / (math.sqrt(2) * 2), 4 / (math.sqrt(2) * 2)], rel=1e-15)
    assert cert.radius.dtype == torch.float64


def test_ties_give_radius_zero_and_first_index() -> None:
    cert = certify(torch.tensor([[2.0, 2.0, 1.0], [5.0, 5.0, 5.0]]), gamma=1.0, lln_weight=None)
    assert cert.predicted.tolist() == [0, 0]
    assert cert.radius.tolist() == [0.0, 0.0]


def test_non_finite_logits_are_not_certified() -> None:
    cert = certify(torch.tensor([[math.nan, 1.0], [math.inf, 0.0], [1.0, 0.0]]), gamma=1.0, lln_weight=None)
    assert cert.predicted.tolist() == [-1, -1, 0]
    assert cert.radius.tolist()[:2] == [0.0, 0.0]
    assert math.isnan(cert.margin[0])
    acc = certified_accuracy(torch.tensor([[math.nan, 1.0]]), torch.tensor([1]), 1.0, [0.0], lln_weight=None)
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
    cert = certify(torch.tensor([[0.9], [0.2], [0.5]]), gamma=4.0, lln_weight=None)
    assert cert.predicted.tolist() == [1, 0, 0]
    assert cert.radius.tolist() == pytest.approx([0.1, 0.075, 0.0])


def test_no_bound_no_certificate() -> None:
    with pytest.raises(ValueError, match="no Lipschitz bound"):
        certify(torch.zeros(1, 3), None, lln_weight=None)


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
    inside = pgd_l2(
        trained_mlp,
        x,
        label,
        (cert.radius * 0.999).float(),
        steps=100,
        restarts=3,
        generator=torch.Generator().manual_seed(0),
    )
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
    # 60 steps: all 40 probes certified, mean radius 0.090 (150 steps: 40, 0.093) in 40 % of the time
    for _ in range(60):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    probes = torch.linspace(-1.9, 1.9, 40)[:, None]
    from lipcore.certify import verified_bound

    assert verified_bound(model) <= 5.0 * (1 + 1e-9)
    cert = model_certificate(model, probes)
    assert (cert.radius > 0).any()
    with torch.no_grad():
        for xi, r, label in zip(probes[:, 0], cert.radius, cert.predicted):
            grid = xi + torch.linspace(-1, 1, 2001)[:, None] * float(r) * 0.9999
            assert (decision(model(grid)) == label).all()


# ---- issue 8: float64 certificates, the verified bound, the LLN head -----------------------------

from lipcore.certify import bound_report, certify_model, float64_model, forward_rounding, verified_bound  # noqa: E402
from lipcore.models import KWL, Resnet  # noqa: E402
from lipcore.models.resnet import ResnetConfig  # noqa: E402


class Linear(LipschitzNet):
    """One gamma-Lipschitz linear layer: its exact certified radius is computable in closed form."""

    def __init__(self, layer: torch.nn.Module, gamma: float) -> None:
        super().__init__(gamma)
        self.body = torch.nn.Sequential(layer)


def exact_linear_radius(w: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """min_j (f_i - f_j) / ||w_i - w_j|| for f = W x + b, float64: the true l2 distance to the
    nearest decision boundary of the top class i."""
    w, z = w.double(), logits.double()
    pred = z.argmax(1)
    out = []
    for zi, i in zip(z, pred):
        d = (w[i] - w).norm(dim=1)
        gap = zi[i] - zi
        gap[i], d[i] = math.inf, 1.0
        out.append((gap / d).min())
    return torch.stack(out)


@pytest.mark.parametrize(
    "make",
    [
        lambda: L.OrthogonLin(512, 10, scale=1.0),
        lambda: L.OrthogonLin(64, 10, scale=1.0),
    ],
    ids=["OrthogonLin-512", "OrthogonLin-64"],
)
def test_alpha_x1000_radii_confirmed_exactly_in_float64(make) -> None:
    """Large alphas make the float32 factors non-orthogonal (||W||_2 up to 1 + 1e-3); the
    certificates now come from float64 weights and max(gamma, verified) and never exceed the exact
    radius of the network that produced them, while the float32 path over-claims."""
    torch.manual_seed(0)
    layer = make()
    with torch.no_grad():
        layer.alpha.mul_(1000.0)
    model = Linear(layer, gamma=1.0).eval()
    x = torch.randn(400, layer.in_features) * 3
    cert, logits, bounds = certify_model(model, x)
    served = float64_model(model).body[0].effective()[0]
    assert served.dtype == torch.float64 and logits.dtype == torch.float64
    exact = exact_linear_radius(served, logits)
    assert (cert.radius <= exact * (1 + 1e-12)).all(), float((cert.radius / exact).max())
    if isinstance(layer, L.OrthogonLin):  # orthonormal rows: sqrt2 is every pair distance, tight
        assert float((cert.radius / exact).max()) > 1 - 1e-6
    assert bounds.verified <= 1 + 1e-9
    # the pre-fix path: float32 weights and logits, radius margin / (sqrt2 gamma)
    with torch.no_grad():
        logits32 = model(x)
    old = certify(logits32, 1.0, lln_weight=None).radius
    exact32 = exact_linear_radius(layer.effective()[0], logits32)
    assert (old > exact32).any(), "float32 factors no longer exceed norm 1: the test lost its point"


def test_verified_bound_of_trained_models(trained_mlp) -> None:
    """verified <= gamma (1 + 1e-9) for a trained model, and it dominates the exact Jacobian norm."""
    report = bound_report(trained_mlp)
    assert report.gamma == 2.0
    assert report.verified <= report.gamma * (1 + 1e-9)
    m64 = float64_model(trained_mlp)
    body = m64.body[:-1] if trained_mlp.lln_head is not None else m64.body
    x, _ = blobs(20, torch.Generator().manual_seed(5))
    worst = 0.0
    for xi in x.double():
        jac = torch.autograd.functional.jacobian(lambda v: body(v[None])[0], xi)
        worst = max(worst, torch.linalg.matrix_norm(jac, 2).item())
    assert 0.5 * report.gamma < worst <= report.verified


def test_certificate_uses_float64_copy_and_larger_bound(trained_mlp) -> None:
    x, _ = blobs(50, torch.Generator().manual_seed(6))
    cert, logits, report = certify_model(trained_mlp, x)
    m64 = float64_model(trained_mlp)
    assert float64_model(trained_mlp) is m64  # cached while the weights do not change
    head = m64.lln_head
    w = head.normalized_weight() if head is not None else None
    with torch.no_grad():
        assert torch.equal(logits, m64(x.double()))
    rnd = forward_rounding(trained_mlp, x)
    plain = certify(logits, report.used, lln_weight=w).radius
    rounded = certify(logits, report.used, lln_weight=w, error=rnd.error(x), error_slope=rnd.e1).radius
    torch.testing.assert_close(cert.radius, rounded, rtol=0, atol=0)
    # the rounding allowance moves radii of a trained model by far less than 1e-9 relative
    assert bool(((plain - cert.radius) <= 1e-9 * plain).all()) and bool((cert.radius <= plain).all())
    # a model trained further gets a fresh copy
    clone = copy.deepcopy(trained_mlp)
    m64_clone = float64_model(clone)
    with torch.no_grad():
        next(clone.parameters()).add_(0.01)
    assert float64_model(clone) is not m64_clone


def test_radius_uses_verified_bound_when_it_exceeds_gamma() -> None:
    """A model whose weights break its construction (gamma claims 1, the layer is 3-Lipschitz)
    is certified with the verified bound, not gamma."""

    class Broken(L.AolLin):
        def reparameterize(self):
            return (3 * torch.eye(3, 4, dtype=self.weights.dtype),)

    model = Linear(Broken(4, 3), gamma=1.0).eval()
    report = bound_report(model)
    assert report.verified == pytest.approx(3.0, rel=1e-9)
    x = torch.randn(5, 4)
    cert, logits, _ = certify_model(model, x)
    torch.testing.assert_close(
        cert.radius, certify(logits, 3.0 * (1 + 1e-12), lln_weight=None).radius, rtol=1e-9, atol=0
    )


def test_certify_requires_the_head_explicitly() -> None:
    """certify() has no default for lln_weight: the sqrt(2) gamma of a model without a head is a
    choice the caller makes, never a silent fallback for LLN models."""
    with pytest.raises(TypeError):
        certify(torch.zeros(2, 3), 1.0)  # type: ignore[call-arg]


def test_lln_gamma_bounds_the_head_input_not_the_logits() -> None:
    """For LLN models gamma (and the verified bound) bound the map to the head's input; the logit
    map itself can exceed gamma (by up to ||W||_2 of the unit rows), and certify_model uses the
    head's pair distances."""
    torch.manual_seed(2)
    model = Mlp(gamma=1.0, lln=True).eval()
    with torch.no_grad():  # rows pointing apart make the head's norm large
        model.lln_head.weight.copy_(torch.tensor([[1.0] * 16, [-1.0] * 16, [1.0] * 8 + [-1.0] * 8]))
    m64 = float64_model(model)
    w = m64.lln_head.normalized_weight()
    assert torch.linalg.matrix_norm(w, 2) > 1.3
    x, _ = blobs(30, torch.Generator().manual_seed(7))
    cert, logits, report = certify_model(model, x)
    assert report.verified <= 1 + 1e-9
    torch.testing.assert_close(
        cert.radius, certify(logits, report.used, lln_weight=w).radius, rtol=1e-9, atol=0
    )  # (rounding allowance)


@pytest.mark.parametrize(
    "make",
    [
        lambda g: KWL("Sandwich", 1, g, img_size=16, num_classes=5),
        lambda g: KWL("Orthogon", 1, g, img_size=16, num_classes=5),
        lambda g: KWL("Aol", 1, g, img_size=16, num_classes=5),
        lambda g: Resnet(ResnetConfig(3, 6, 4, 2, 32), g, img_size=16, num_classes=5),
        lambda g: Resnet(ResnetConfig(3, 6, 4, 2, 32), g, img_size=16, num_classes=5, lln=True),
    ],
    ids=["KWL-Sandwich", "KWL-Orthogon", "KWL-Aol", "Resnet-SLL", "Resnet-SLL-LLN"],
)
def test_verified_bound_of_paper_architectures(make) -> None:
    """0 < Jacobian norm at a point <= verified <= gamma (1 + 1e-9) (AOL's verified bound is far
    below gamma: its rescaling is loose, and the verified bound measures the served weights)."""
    torch.manual_seed(0)
    model = make(3.0).eval()
    v = verified_bound(model)
    assert v <= 3.0 * (1 + 1e-9)
    m64 = float64_model(model)
    body = m64.body[:-1] if m64.lln_head is not None else m64.body
    xi = torch.rand(3, 16, 16, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: body(v[None])[0], xi)
    assert 0 < torch.linalg.matrix_norm(jac.reshape(-1, xi.numel()), 2).item() <= v


def test_verified_bound_with_alphas_x1000_is_reported_and_used() -> None:
    torch.manual_seed(1)
    model = KWL("Sandwich", 1, 2.0, img_size=16, num_classes=5).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.mul_(1000.0)
    report = bound_report(model)
    assert report.used == max(2.0, report.verified)
    assert report.verified <= 2.0 * (1 + 1e-9)  # float64 factors stay orthogonal to ~1e-12

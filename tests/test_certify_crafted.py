"""Certificates that hold for any weights (issue 21): crafted weights a user could import or export.

Each test builds the reproducing weights of the issue in the test: a NaN bound (psi = -800), tied
LLN rows, metadata std that is not the model's normalisation, exports of Cayley factors with huge
alphas, a Resnet-LLN head's sqrt(gamma), a stale float64 copy; and a property test: for random
crafted weights no certified point flips under PGD at 0.999 x its radius (library and ONNX).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lipcore.attack import decision, pgd_l2
from lipcore.certify import bound_report, certify_model, float64_model
from lipcore.checkpoint import CheckpointError, LoadedModel, load_model
from lipcore.models import Resnet, Toy
from lipcore.models.resnet import ResnetConfig
from lipcore.spec import ExperimentSpec


def _toy(layer: str, gamma: float, in_f: int = 1, out_f: int = 1, seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    return Toy(layer, gamma, in_f, out_f).eval()


def test_nan_bound_certifies_nothing() -> None:
    """psi = -800: exp(800) overflows, the float64 verified bound is NaN; it used to become gamma
    (max(2.0, nan) == 2.0) and the Toy was certified with radius 0.239 at x = 0.05."""
    model = _toy("Sandwich", 2.0)
    first = model.body[0]
    with torch.no_grad():
        # one neuron whose pre-activation is -inf for x > 0 (so the output is finite there, and
        # NaN for x < 0): its row of sqrt2 Psi^-1 B becomes infinite, its column of A^T Psi zero
        j = int(torch.nonzero(first.effective()[1][:, 0] < 0)[0, 0])
        first.psi[j] = -800.0
    cert, logits, report = certify_model(model, torch.tensor([[0.05], [0.3]]))
    assert bool(torch.isfinite(logits).all())  # the logits look fine; the bound is not
    assert math.isnan(report.verified) and math.isnan(report.used)
    assert cert.radius.tolist() == [0.0, 0.0]
    assert cert.predicted.tolist() == decision(logits).tolist()  # predictions are still given


def _resnet_lln(gamma: float, classes: int = 3) -> Resnet:
    torch.manual_seed(1)
    return Resnet(ResnetConfig(1, 4, 2, 1, 8), gamma, in_channels=1, img_size=4, num_classes=classes, lln=True)


def test_identical_lln_rows_give_radius_zero() -> None:
    """Two identical head rows with biases 0 and 1e-30 and every SLL bias -100 (the blocks are then
    the identity near 0): the tie is decided by float64 rounding, so nothing is certified (it was
    6.995 while perturbations of norm 1e-6 flipped the float64 prediction)."""
    model = _resnet_lln(1.0).eval()
    head = model.lln_head
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and p is not head.bias:
                p.fill_(-100.0)
        head.weight[1] = head.weight[0]
        head.bias.copy_(torch.tensor([0.0, 1e-30, -1.0]))
    x = torch.zeros(1, 1, 4, 4)
    cert, logits, _ = certify_model(model, x)
    assert cert.radius.item() == 0.0
    # float64 evaluations a tiny step away do flip between the tied classes: the radius 0 is needed
    m64 = float64_model(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        preds = {
            int(m64(x.double() + 1e-3 * torch.randn(x.shape, generator=g, dtype=torch.float64)).argmax())
            for _ in range(20)
        }
    assert preds <= {0, 1}
    # a real margin is still certified, also between the identical rows (no longer infinite)
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.0, 0.5, -1.0]))
    assert certify_model(model, x)[0].radius.item() > 0


def test_metadata_std_must_be_positive_finite_and_fit_the_input(tmp_path) -> None:
    from lipcore.checkpoint import check_metadata

    toy = ExperimentSpec(model="Toy", layer="Sandwich", gamma=2.0)
    assert check_metadata(toy, [], [0.0], [50.0]) == ([], (0.0,), (50.0,))
    for std, words in (([-1.0], "> 0"), ([0.0], "> 0"), (["x"], "finite numbers"), ([1.0, 2.0], "1 or 1")):
        with pytest.raises(CheckpointError, match="'std'") as e:
            check_metadata(toy, [], [0.0], std)
        assert words in str(e.value)
    # through load_model: a Toy file whose std is negative is refused before anything is built
    model = _toy("Sandwich", 2.0)
    meta = {"format": "lbdn-model/1", "spec": toy.model_dump_json(), "classes": "[]", "mean": "[0]", "std": "[-1]"}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"), meta)
    with pytest.raises(CheckpointError, match="'std' must be > 0"):
        load_model(tmp_path / "m.safetensors")


@pytest.mark.parametrize(
    ("classes", "mean", "field"),
    [
        (5, [0], "classes"),
        ([1, 2], [0], "classes"),
        ([None], [0], "classes"),
        (["a", "b", "c"], [0], "classes"),
        ([], 5, "mean"),
        ([], [math.inf], "mean"),
        ([], [0, 0], "mean"),
    ],
)
def test_metadata_classes_and_mean_are_checked(tmp_path, classes, mean, field) -> None:
    toy = ExperimentSpec(model="Toy", layer="Sandwich", gamma=2.0)
    meta = {
        "format": "lbdn-model/1",
        "spec": toy.model_dump_json(),
        "classes": json.dumps(classes),
        "mean": json.dumps(mean),
        "std": "[1]",
    }
    model = _toy("Sandwich", 2.0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"), meta)
    with pytest.raises(CheckpointError, match=f"'{field}'"):
        load_model(tmp_path / "m.safetensors")


@pytest.mark.parametrize("gamma", [0.25, 4.0])
def test_resnet_lln_bound_includes_the_heads_sqrt_gamma(gamma: float) -> None:
    """The head carries sqrt(gamma): verified used to be sqrt(gamma) x body, a 2x under-claim at
    gamma 0.25 (radius twice too small) and at gamma 4 a body broken by up to sqrt(gamma) hid
    behind gamma."""
    model = _resnet_lln(gamma).eval()
    report = bound_report(model)
    assert report.verified == pytest.approx(gamma, rel=1e-6)
    x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    cert, logits, report = certify_model(model, x)
    assert report.used == pytest.approx(gamma, rel=1e-6)
    # a body that breaks its construction by sqrt(gamma) (the padding's scale doubled) is caught
    model.body[0].scale *= 2.0
    broken = bound_report(model)
    assert broken.verified == pytest.approx(2 * gamma, rel=1e-6) and broken.used > gamma * 1.5


def test_float64_copy_follows_plain_attributes() -> None:
    """The float64 copy was cached on parameters and buffers only: a changed `scale` left it stale."""
    model = _toy("Orthogon", 1.0)
    x = torch.tensor([[0.2]])
    before = certify_model(model, x)
    model.body[0].scale = 3.0
    after = certify_model(model, x)
    assert after[2].verified == pytest.approx(3 * before[2].verified, rel=1e-9)
    with torch.no_grad():
        assert torch.equal(after[1], float64_model(model)(x.double()))
        assert not torch.equal(after[1], before[1])


# ---- exports of huge alphas -------------------------------------------------------------------------
def _scale_alphas(model: torch.nn.Module, factor: float) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.mul_(factor)


def _loaded(net: torch.nn.Module, shape: dict | None = None, **spec) -> LoadedModel:
    es = ExperimentSpec(**spec).model_copy(update=shape or {})  # (shape: a Toy of other widths)
    info = es.dataset_info
    return LoadedModel(net.eval(), es, [f"c{i}" for i in range(es.num_classes or 1)], info.mean, info.std)


@pytest.mark.parametrize("factor", [1e3, 1e5])
def test_toy_orthogon_export_records_the_bound_of_its_own_weights(tmp_path, factor) -> None:
    """A crafted Toy-Orthogon export had slope 4.0000912 against a recorded bound 4.0 (float32
    Cayley transforms), and certify_onnx was violated at 0.9999 x its radius."""
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from lipcore.export import certify_onnx, read_onnx_metadata, standard_model, to_onnx

    model = _toy("Orthogon", 4.0, seed=3)
    _scale_alphas(model, factor)
    loaded = _loaded(model, model="Toy", layer="Orthogon", gamma=4.0)
    path = to_onnx(loaded, tmp_path / "toy.onnx")
    meta = read_onnx_metadata(path)
    linears = [m for m in standard_model(loaded).modules() if isinstance(m, torch.nn.Linear)]
    norms = [torch.linalg.matrix_norm(m.weight.double(), 2).item() for m in linears]
    # the file's weights are within the bound it records (their product bounds its slope)
    assert math.prod(norms) <= max(meta["gamma"], meta["verified_bound"])
    from lipcore.export_check import unit_bound

    assert all(n <= unit_bound(m) for n, m in zip(norms, linears))
    # 1-D input: the certified interval can be scanned densely
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    cert = certify_onnx(path, x.numpy())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for xi, r, pred in zip(x[:, 0].tolist(), cert.radius.tolist(), cert.predicted.tolist()):
        if r <= 0:
            continue
        grid = np.linspace(xi - 0.999 * r, xi + 0.999 * r, 2001, dtype=np.float64)[:, None]
        out = session.run(["logits"], {"x": grid.astype(np.float32)})[0]
        assert bool(((out[:, 0] > 0.5).astype(int) == pred).all())


@pytest.mark.slow
def test_kwl_orthogon_export_weights_do_not_exceed_their_bound(tmp_path) -> None:
    """KWL-Orthogon-small with alphas x1e3: its exported OrthogonFc had norm 1.0016 x its bound."""
    from lipcore.export import read_onnx_metadata, standard_model, to_onnx
    from lipcore.models import build

    spec = dict(model="KWL", layer="Orthogon", scale="small", gamma=1.0, dataset="cifar10")
    torch.manual_seed(4)
    model = build(ExperimentSpec(**spec))
    _scale_alphas(model, 1e3)
    loaded = _loaded(model, **spec)
    net = standard_model(loaded)
    for m in net.modules():
        if isinstance(m, torch.nn.Linear):  # orthogonal layers, scale 1 (gamma 1)
            assert torch.linalg.matrix_norm(m.weight.double(), 2).item() <= 1 + 1e-6
    from lipcore.export_check import exported_bound, units

    pytest.importorskip("onnxruntime")
    meta = read_onnx_metadata(to_onnx(loaded, tmp_path / "kwl.onnx"))
    assert meta["verified_bound"] == pytest.approx(exported_bound(units(net)), rel=1e-12)


# ---- property: no certified point flips under PGD at 0.999 x its radius -----------------------------
FAMILIES = ("Sandwich", "Orthogon", "Aol", "SLL")


def crafted_toy(seed: int, in_f: int = 4, out_f: int = 3) -> Toy:
    """A Toy (default: 4 inputs, 3 classes) with extreme weights: alphas x 10^U(0, 5), psi
    ~ U(-20, 20), biases x 10^U(-1, 2), weights x 10^U(-3, 3)."""
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand((), generator=g).item()  # noqa: E731
    family = FAMILIES[seed % len(FAMILIES)]
    model = _toy(family, 10 ** u(-1, 1), in_f, out_f, seed=seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.mul_(10 ** u(0, 5))
            elif name.endswith("psi"):
                p.copy_(torch.empty_like(p).uniform_(-20, 20, generator=g))
            elif name.endswith("bias"):
                p.mul_(10 ** u(-1, 2))
            elif p.dim() >= 2:
                p.mul_(10 ** u(-3, 3))
    return model


def flips_at(model64: torch.nn.Module, x: torch.Tensor, pred: torch.Tensor, radius: torch.Tensor) -> int:
    """How many certified points PGD (float64, 0.999 x radius) moves to another decision."""
    keep = radius > 0
    if not bool(keep.any()):
        return 0
    xa, pa, ra = x[keep], pred[keep], radius[keep]
    adv = pgd_l2(model64, xa, pa, 0.999 * ra, steps=40, restarts=2, generator=torch.Generator().manual_seed(0))
    assert bool(((adv - xa).flatten(1).norm(dim=1) <= ra).all())
    with torch.no_grad():
        return int((decision(model64(adv)) != pa).sum())


@pytest.mark.parametrize("seed", range(8))
def test_no_certified_point_flips_under_pgd(seed: int) -> None:
    model = crafted_toy(seed)
    x = 3 * torch.randn(16, 4, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    cert, logits, _ = certify_model(model, x)
    assert flips_at(float64_model(model), x, cert.predicted, cert.radius) == 0


@pytest.mark.parametrize("seed", range(4))
def test_no_certified_point_flips_through_certify_onnx(tmp_path, seed: int) -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from lipcore.export import certify_onnx, standard_model, to_onnx

    model = crafted_toy(seed)
    loaded = _loaded(model, {"in_channels": 4, "num_classes": 3}, model="Toy", layer=model.layer, gamma=model.gamma)
    path = to_onnx(loaded, tmp_path / "m.onnx")
    x = 3 * torch.randn(16, 4, generator=torch.Generator().manual_seed(200 + seed), dtype=torch.float64)
    cert = certify_onnx(path, x.numpy())
    keep = cert.radius > 0
    if not bool(keep.any()):
        return
    # PGD on the exported network (float64 evaluation of the file's own weights), judged by onnxruntime
    net = standard_model(loaded).double()
    xa, pa, ra = x[keep], cert.predicted[keep], cert.radius[keep]
    adv = pgd_l2(net, xa, pa, 0.999 * ra, steps=40, restarts=2, generator=torch.Generator().manual_seed(1))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(["logits"], {"x": adv.numpy().astype(np.float32)})[0]
    assert bool((decision(torch.from_numpy(out)) == pa).all())

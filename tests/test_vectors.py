"""Every layer reproduces the authors' outputs (float64, 1e-9) from the same parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lipcore import layers as L
from lipcore.losses import MultiMargin, Xent
from tests.conftest import VECTORS

DATA = np.load(VECTORS / "reference_layers.npz")
CASES = sorted({k.split("/")[0] for k in DATA.files})
TOL = 1e-9


def meta(case: str, name: str):
    return DATA[f"{case}/meta_{name}"].item()


def build(case: str) -> torch.nn.Module:
    m = lambda n: meta(case, n)  # noqa: E731
    fam = case.removesuffix("_stride2")
    if fam in ("sandwich_conv", "sandwich_conv_lin", "orthogon_conv"):
        cls = {
            "sandwich_conv": L.SandwichConv,
            "sandwich_conv_lin": L.SandwichConvLin,
            "orthogon_conv": L.OrthogonConv,
        }[fam]
        size = DATA[f"{case}/x"].shape[-1]
        return cls(m("cin"), m("cout"), m("kernel"), stride=m("stride"), scale=m("scale"), input_size=size)
    fc = {
        "sandwich_fc": L.SandwichFc,
        "sandwich_lin": L.SandwichLin,
        "orthogon_fc": L.OrthogonFc,
        "orthogon_lin": L.OrthogonLin,
        "aol_fc": L.AolFc,
        "aol_lin": L.AolLin,
        "linear_normalized": L.LinearNormalized,
    }
    if fam in fc:
        return fc[fam](m("fin"), m("fout"), scale=m("scale"))
    if fam == "aol_conv":
        return L.AolConv(m("cin"), m("cout"), m("kernel"), scale=m("scale"))
    if fam == "sll_fc":
        # The published SLL adds epsilon to 1/q_i only; our default corrects that (see sll.py and
        # test_sll_reference_epsilon_exceeds_bound), the flag reproduces the reference numbers.
        return L.SLLBlockFc(m("features"), m("inner"), reference_epsilon=True)
    if fam == "sll_conv":
        return L.SLLBlockConv(m("channels"), m("inner"), m("kernel"))
    raise KeyError(case)


def test_all_seventeen_cases_are_covered() -> None:
    assert len(CASES) == 17


@pytest.mark.parametrize("case", [c for c in CASES if not c.startswith("loss_")])
def test_layer_matches_reference(case: str) -> None:
    layer = build(case).double()
    params = {
        k.split("/", 1)[1]: torch.from_numpy(DATA[k])
        for k in DATA.files
        if k.startswith(case + "/") and k.split("/", 1)[1] not in ("x", "y") and "/meta_" not in k
    }
    layer.load_state_dict(params, strict=True)  # names and shapes exactly the reference's
    x, y = torch.from_numpy(DATA[f"{case}/x"]), torch.from_numpy(DATA[f"{case}/y"])
    out = layer.train()(x)
    assert out.shape == y.shape
    assert (out - y).abs().max().item() < TOL
    # eval mode (cached factors) gives the same numbers
    assert (layer.eval()(x) - y).abs().max().item() < TOL


@pytest.mark.parametrize("case", ["loss_xent", "loss_multimargin"])
def test_loss_matches_reference(case: str) -> None:
    logits = torch.from_numpy(DATA[f"{case}/logits"])
    labels = torch.from_numpy(DATA[f"{case}/labels"])
    if case == "loss_xent":
        fn = Xent(logits.shape[1], offset=meta(case, "offset"), temperature=meta(case, "temperature"))
    else:
        fn = MultiMargin(meta(case, "margin"))
    assert abs(fn(logits, labels).item() - DATA[f"{case}/loss"].item()) < TOL


def test_sll_default_is_close_to_reference_and_bounded() -> None:
    """The corrected SLL differs from the reference only at the epsilon scale."""
    case = "sll_fc"
    ref = build(case).double()
    ours = L.SLLBlockFc(meta(case, "features"), meta(case, "inner")).double()
    params = {n: torch.from_numpy(DATA[f"{case}/{n}"]) for n in ("weights", "bias", "q")}
    ref.load_state_dict(params)
    ours.load_state_dict(params)
    x = torch.from_numpy(DATA[f"{case}/x"])
    assert (ours(x) - ref(x)).abs().max().item() < 1e-4


def test_sll_reference_epsilon_exceeds_bound() -> None:
    """One neuron with a tiny q: the reference form is (1 + 2 eps / q)-Lipschitz; ours is 1-Lipschitz."""
    for ref_eps, expect_above_one in ((True, True), (False, False)):
        block = L.SLLBlockFc(3, 1, reference_epsilon=ref_eps).double()
        with torch.no_grad():
            block.weights.copy_(torch.tensor([[1.0, 0.0, 0.0]]))
            block.bias.fill_(10.0)  # ReLU active around the probe points
            block.q.fill_(1e-4)
        x = torch.zeros(1, 3, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda v: block(v[None])[0], x[0])
        norm = torch.linalg.matrix_norm(jac, 2).item()
        assert (norm > 1 + 1e-3) == expect_above_one, norm

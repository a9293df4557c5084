"""The fast paths compute what the plain formulas compute, and the speed options run and default off.

The reference vectors (test_vectors.py) pin every layer to the authors' outputs at 1e-9; these tests
pin the pieces the speed-ups introduced: the real-block frequency products, the complex matmul and
inverse through real arithmetic, bf16 autocast kept out of the Cayley transform, and the spec's
`compile` / `precision` options.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lipcore import layers as L
from lipcore.layers.cayley import cayley, inverse, matmul
from lipcore.layers.fourier import apply_response, kernel_fft, rfft2
from lipcore.losses import build_loss
from lipcore.models import build
from lipcore.spec import ExperimentSpec
from lipcore.train import train, train_step


@pytest.mark.parametrize("k,n,cin,cout", [(3, 8, 3, 5), (3, 7, 4, 4), (1, 6, 2, 3)])
def test_frequency_product_is_circular_convolution(k: int, n: int, cin: int, cout: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(cout, cin, k, k, dtype=torch.float64)
    x = torch.randn(5, cin, n, n, dtype=torch.float64)
    p = k // 2
    dense = F.conv2d(F.pad(x, (p, p, p, p), mode="circular"), w)
    assert torch.allclose(apply_response(kernel_fft(w, n), x, n), dense, atol=1e-12)


@pytest.mark.parametrize("h,w", [(8, 8), (7, 7), (6, 5), (1, 1), (2, 2)])
def test_rfft2_gradient_matches_autograd(h: int, w: int) -> None:
    torch.manual_seed(5)
    x = torch.randn(3, 2, h, w, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(3, 2, h, w // 2 + 1, dtype=torch.complex128)
    (g1,) = torch.autograd.grad((rfft2(x) * probe).real.sum(), x)
    (g2,) = torch.autograd.grad((torch.fft.rfft2(x) * probe).real.sum(), x)
    assert torch.equal(rfft2(x), torch.fft.rfft2(x))
    assert torch.allclose(g1, g2, atol=1e-12)


def test_complex_matmul_and_inverse_match_torch() -> None:
    torch.manual_seed(1)
    a = torch.randn(7, 4, 3, dtype=torch.complex128)
    b = torch.randn(7, 3, 5, dtype=torch.complex128)
    g = torch.randn(7, 4, 4, dtype=torch.complex128) + 4 * torch.eye(4)
    assert torch.allclose(matmul(a, b), a @ b, atol=1e-13)
    assert torch.allclose(matmul(a.mH, a), a.mH @ a, atol=1e-13)
    assert torch.allclose(inverse(g), torch.linalg.inv(g), atol=1e-13)
    r = torch.randn(3, 4, dtype=torch.float64)
    assert torch.equal(matmul(r, r.T), r @ r.T)


def test_cayley_gradients_match_complex_reference() -> None:
    """Gradients through the real-arithmetic Cayley equal those of the textbook complex formula."""
    torch.manual_seed(2)
    w = torch.randn(6, 7, 4, dtype=torch.complex128, requires_grad=True)

    def reference(w: torch.Tensor) -> torch.Tensor:
        n = w.shape[-1]
        u, v = w[..., :n, :], w[..., n:, :]
        eye = torch.eye(n, dtype=w.dtype)
        inv = torch.linalg.inv(eye + u - u.mH + v.mH @ v)
        return torch.cat((2 * inv - eye, -2 * v @ inv), dim=-2)

    probe = torch.randn(6, 7, 4, dtype=torch.complex128)
    (g1,) = torch.autograd.grad((cayley(w) * probe).real.sum(), w)
    (g2,) = torch.autograd.grad((reference(w) * probe).real.sum(), w)
    assert torch.allclose(cayley(w), reference(w), atol=1e-12)
    assert torch.allclose(g1, g2, atol=1e-11)


def test_cayley_under_bf16_autocast_stays_float32_and_orthogonal() -> None:
    torch.manual_seed(3)
    w = torch.randn(20, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = cayley(w)
    assert q.dtype == torch.float32
    assert torch.allclose(q.T @ q, torch.eye(8), atol=1e-5)


def test_speed_options_default_to_today() -> None:
    spec = ExperimentSpec(model="KWL", layer="Sandwich", dataset="cifar10")
    assert (spec.compile, spec.precision) == ("auto", "fp32")
    # a spec.json written before these options existed reads as the same experiment
    old = {k: v for k, v in spec.model_dump(mode="json").items() if k not in ("compile", "precision")}
    assert ExperimentSpec.model_validate_json(json.dumps(old)) == spec
    with pytest.raises(ValueError, match="precision"):
        ExperimentSpec(model="KWL", layer="Sandwich", dataset="cifar10", precision="fp16")
    with pytest.raises(ValueError, match="compile"):
        ExperimentSpec(model="KWL", layer="Sandwich", dataset="cifar10", compile="yes")


def _step_once(spec: ExperimentSpec) -> tuple[torch.Tensor, torch.nn.Module]:
    torch.manual_seed(0)
    model = build(spec)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(8, spec.in_channels, spec.img_size, spec.img_size)
    y = torch.randint(0, spec.num_classes, (8,))
    loss, _ = train_step(model, build_loss(spec), opt, spec, torch.device("cpu"))(x, y)
    return loss, model


@pytest.mark.parametrize("layer", ["Sandwich", "Orthogon"])
def test_bf16_training_step_runs_and_keeps_float32_weights(layer: str) -> None:
    base = dict(model="KWL", layer=layer, scale="small", dataset="cifar10", loss="multimargin")
    loss16, model16 = _step_once(ExperimentSpec(**base, precision="bf16"))
    loss32, _ = _step_once(ExperimentSpec(**base))
    assert torch.isfinite(loss16) and loss16.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model16.parameters())
    assert abs(loss16.item() - loss32.item()) < 0.05 * abs(loss32.item()) + 1e-3


@pytest.mark.slow  # seconds to a minute each on 2 cores: make test runs it, make test-fast not
def test_compiled_training_matches_eager(tmp_path, monkeypatch) -> None:
    """compile='on' (forced on the CPU here) trains the Toy network to the eager run's weights.

    Dynamo capture and AOTAutograd run for real; the backend is aot_eager because inductor's C++
    build alone takes minutes on a busy 2-core machine (measured: 470 s for this test).
    """
    import lipcore.train

    monkeypatch.setattr(lipcore.train, "COMPILE_BACKEND", "aot_eager")
    base = dict(model="Toy", layer="Sandwich", gamma=2.0, epochs=1)
    eager = train(ExperimentSpec(**base, compile="off"), tmp_path / "eager", lipschitz_restarts=0)
    compiled = train(ExperimentSpec(**base, compile="on"), tmp_path / "compiled", lipschitz_restarts=0)
    assert compiled.status == "completed"
    a, b = eager.metrics[-1], compiled.metrics[-1]
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-6)
    assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-4, abs=1e-6)


def test_kwl_sandwich_layers_agree_in_float32_and_float64() -> None:
    """The float32 fast path stays within float tolerance of the float64 computation."""
    torch.manual_seed(4)
    for layer in (
        L.SandwichConv(3, 8, 3, input_size=8),
        L.SandwichConv(4, 8, 3, stride=2, input_size=8),
        L.OrthogonConv(4, 6, 3, input_size=8),
        L.SandwichConvLin(4, 4, 3, input_size=8),
    ):
        x = torch.randn(4, layer.in_channels, 8, 8, dtype=torch.float64)
        y64 = layer.double()(x)
        y32 = layer.float()(x.float())
        assert torch.allclose(y32.double(), y64, atol=1e-5, rtol=1e-4)

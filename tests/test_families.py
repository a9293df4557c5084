"""Layer families as records: a family defined only here (no edit to lipcore) is a full citizen.

`Spectral` is a trivially 1-Lipschitz family: linear layers W / ||W||_2, and zero-padded
convolutions whose kernel is divided by the spectral norm of the matrix of its per-channel-pair l1
norms (by Young's inequality each channel pair is a map of norm <= ||k_oi||_1, and the triangle
inequality bounds the whole by ||(||k_oi||_1)||_2); stride 2 subsamples, a contraction. Registering it
makes it a layer of KWL and Toy (their cards take every family with the right constructors), so
specs validate, models build, and the property tests of test_lipschitz_property hold for it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from lipcore.catalog import LayerFamily, family_names, get_card, get_family, register_family, register_layer
from lipcore.certify import empirical_lipschitz, verified_bound
from lipcore.layers.plain import plain_linear
from lipcore.models import KWL, Toy, build
from lipcore.spec import ExperimentSpec

# The family's record (torch-free: what specs are validated against); its layers register below.
SPECTRAL = register_family(
    LayerFamily(
        "Spectral",
        frozenset({"conv", "fc", "lin"}),
        toy_width=16,
        kwl_hidden=64,
        description="spectral-normalised layers (defined in tests/test_families.py)",
    )
)


def _conv_norm(k: Tensor) -> Tensor:
    return torch.linalg.matrix_norm(k.abs().sum((2, 3)), 2)


@register_layer("Spectral", "fc")
class SpectralLinear(nn.Module):
    """y = scale * x W^T / ||W||_2 + b, optionally followed by ReLU: (b, in) -> (b, out)."""

    def __init__(self, in_features: int, out_features: int, *, scale: float = 1.0, relu: bool = True) -> None:
        super().__init__()
        self.lin, self.scale, self.relu = nn.Linear(in_features, out_features), float(scale), relu

    def forward(self, x: Tensor) -> Tensor:
        w = self.lin.weight / torch.linalg.matrix_norm(self.lin.weight, 2)
        y = F.linear(self.scale * x, w, self.lin.bias)
        return F.relu(y) if self.relu else y

    def lipschitz_bound(self) -> float:
        w = self.lin.weight.detach().double()
        return abs(self.scale) * (torch.linalg.matrix_norm(w / torch.linalg.matrix_norm(w, 2), 2).item()) * (1 + 1e-12)


@register_layer("Spectral", "conv")
class SpectralConv(nn.Module):
    """Zero-padded conv with ReLU, kernel / ||(||k_oi||_1)||_2: (b, in, N, N) -> (b, out, N/s, N/s)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        scale: float = 1.0,
        input_size: int | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)
        self.scale = float(scale)

    def forward(self, x: Tensor) -> Tensor:
        k = self.conv.weight / _conv_norm(self.conv.weight)
        return F.relu(F.conv2d(self.scale * x, k, self.conv.bias, self.conv.stride, self.conv.padding))

    def lipschitz_bound(self) -> float:
        k = self.conv.weight.detach().double()
        return abs(self.scale) * _conv_norm(k / _conv_norm(k)).item() * (1 + 1e-12)


@register_layer("Spectral", "lin")
def spectral_lin(in_features: int, out_features: int, *, scale: float = 1.0) -> SpectralLinear:
    return SpectralLinear(in_features, out_features, scale=scale, relu=False)


def assert_bounded(model: nn.Module, x: Tensor, bound: float) -> None:
    """Jacobian spectral norms at the rows of x and the paper's empirical estimate, both <= bound."""
    model.eval()
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], xi)
        out = math.prod(jac.shape[: jac.dim() - xi.dim()])
        assert torch.linalg.matrix_norm(jac.reshape(out, -1), 2).item() <= bound * (1 + 1e-4)
    assert empirical_lipschitz(model, x, restarts=2, max_steps=60) <= bound * (1 + 1e-4)


def test_a_registered_family_is_a_layer_of_kwl_and_toy_only() -> None:
    assert "Spectral" in family_names() and get_family("Spectral") is SPECTRAL
    assert {"conv", "fc", "lin", "toy"} <= SPECTRAL.capabilities
    assert "Spectral" in get_card("KWL").layer_names() and "Spectral" in get_card("Toy").layer_names()
    assert "Spectral" not in get_card("Resnet").layer_names()
    with pytest.raises(ValidationError, match="layer 'Spectral' is not defined for model Resnet"):
        ExperimentSpec(model="Resnet", layer="Spectral", dataset="cifar10")
    with pytest.raises(ValidationError, match="layer 'Nope' is unknown"):
        ExperimentSpec(model="KWL", layer="Nope", dataset="cifar10")
    with pytest.raises(ValueError, match="already registered"):
        register_family(LayerFamily("Spectral", frozenset({"fc"})))


@pytest.mark.parametrize("gamma", [0.5, 3.0])
def test_spec_validates_and_builds_a_bounded_kwl(gamma: float) -> None:
    spec = ExperimentSpec(model="KWL", layer="Spectral", dataset="cifar10", gamma=gamma, cert_acc=True)
    assert spec.bounded and spec.classifies and spec.run_name() == f"KWL-Spectral-small-gamma{gamma:.1f}"
    model = build(spec).double()
    assert model.gamma == gamma and isinstance(model.body[0], SpectralConv)
    assert model(torch.rand(2, 3, 32, 32, dtype=torch.float64)).shape == (2, 10)
    assert verified_bound(model) <= gamma * (1 + 1e-9)  # per-layer lipschitz_bound() of the family's layers


@pytest.mark.parametrize("gamma", [0.3, 4.0])
def test_toy_of_the_family_is_bounded_by_gamma(gamma: float) -> None:
    spec = ExperimentSpec(model="Toy", layer="Spectral", gamma=gamma)
    assert spec.task == "regressor" and not spec.classifies and spec.loss == "mse"
    model = build(spec).double()
    with torch.no_grad():  # move off the initial point: biases that switch ReLUs on and off
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.bias.add_(torch.randn_like(m.bias))
    assert_bounded(model, torch.rand(4, 1, dtype=torch.float64) * 4 - 2, gamma)


def test_kwl_of_the_family_is_bounded_by_gamma() -> None:
    model = KWL("Spectral", 1, 2.0, in_channels=3, img_size=8, num_classes=4).double()
    assert_bounded(model, torch.rand(1, 3, 8, 8, dtype=torch.float64), 2.0)


def test_an_unbounded_family_drops_gamma_and_one_without_conv_is_toy_only() -> None:
    fc_only = register_family(LayerFamily("SpectralFcOnly", frozenset({"fc", "lin"}), toy_width=8))
    register_layer("SpectralFcOnly", "fc")(SpectralLinear)
    register_layer("SpectralFcOnly", "lin")(spectral_lin)
    assert "SpectralFcOnly" in get_card("Toy").layer_names()
    assert "SpectralFcOnly" not in get_card("KWL").layer_names()
    assert len(Toy(fc_only, 1.0).body) == 10
    with pytest.raises(ValueError, match="KWL needs conv, fc and lin"):
        KWL(fc_only, 1, 1.0)
    free = register_family(LayerFamily("FreeFc", frozenset({"fc", "lin", "activation"}), bounded=False, toy_width=8))
    for kind in ("fc", "lin"):
        register_layer("FreeFc", kind)(plain_linear)
    register_layer("FreeFc", "activation")(nn.ReLU)
    spec = ExperimentSpec(model="Toy", layer=free.name, gamma=2.0)
    assert spec.gamma is None and not spec.bounded and build(spec).gamma is None
    with pytest.raises(ValidationError, match="cert_acc needs a Lipschitz bound; an unconstrained FreeFc network"):
        ExperimentSpec(model="Toy", layer="FreeFc", cert_acc=True)

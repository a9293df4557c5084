"""Model construction: registry, float64/float32 agreement, shape checks and clear errors."""

from __future__ import annotations

import pytest
import torch

from lipcore import layers as L
from lipcore.models import build, list_models
from lipcore.spec import ExperimentSpec

CONFIGS = (
    [dict(model="Toy", layer=layer, gamma=2.0) for layer in ("Sandwich", "Orthogon", "Aol", "SLL", "Plain")]
    + [
        dict(model="KWL", layer=layer, scale="small", dataset="cifar10", gamma=2.0)
        for layer in ("Sandwich", "Orthogon", "Aol", "Plain")
    ]
    + [dict(model="KWL", layer="Sandwich", scale="small", dataset="tiny_imagenet", gamma=2.0)]
)


def test_registry_lists_the_paper_models() -> None:
    assert list_models() == ["DNN", "KWL", "Resnet", "Toy"]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c['model']}-{c['layer']}-{c.get('dataset', 'sq')}")
def test_float64_copy_gives_the_same_outputs(cfg) -> None:
    spec = ExperimentSpec(**cfg)
    model = build(spec).eval()
    shape = (4, 1) if spec.model == "Toy" else (4, 3, spec.img_size, spec.img_size)
    x = torch.rand(shape)
    y32 = model(x)
    assert y32.shape == (4, spec.num_classes)
    y64 = model.double()(x.double())
    assert y64.dtype == torch.float64
    # float32 rounding accumulates over 16k-wide layers: compare at 1e-3 of the output scale
    scale = y64.abs().max().item()
    torch.testing.assert_close(y64.float(), y32, rtol=1e-4, atol=1e-3 * scale + 1e-7)


def test_models_have_gamma_and_lln_head() -> None:
    plain = build(ExperimentSpec(model="KWL", layer="Plain", dataset="cifar10"))
    assert plain.gamma is None and plain.lln_head is None
    dnn = build(ExperimentSpec(model="DNN", dataset="cifar10", gamma=3.0))
    assert dnn.gamma == 3.0 and isinstance(dnn.lln_head, L.LinearNormalized)


def test_input_shape_errors_name_the_expected_shape() -> None:
    layer = L.SandwichConv(3, 4, 3, input_size=32)
    with pytest.raises(ValueError, match=r"expects input \(batch, 3, 32, 32\), got \(1, 3, 28, 28\)"):
        layer(torch.rand(1, 3, 28, 28))


def test_layer_argument_errors() -> None:
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        L.SandwichConv(3, 4, 3, stride=3, input_size=32)
    with pytest.raises(ValueError, match="multiple of stride"):
        L.OrthogonConv(3, 4, 3, stride=2, input_size=7)
    with pytest.raises(ValueError, match="stride 1 only"):
        L.AolConv(3, 4, 3, stride=2)


def test_unresolved_spec_is_refused() -> None:
    spec = ExperimentSpec(model="KWL", layer="Sandwich", dataset="image_folder", data_path="pets")
    with pytest.raises(ValueError, match="resolve it against the data"):
        build(spec)
    resolved = spec.model_copy(update=dict(in_channels=3, img_size=64, num_classes=7))
    assert build(resolved)(torch.rand(1, 3, 64, 64)).shape == (1, 7)


def test_layers_are_device_and_dtype_agnostic() -> None:
    """Layers honour factory kwargs and create nothing on a fixed device (meta device works)."""
    layer = L.SandwichConv(3, 4, 3, input_size=8, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    with torch.device("meta"):
        m = build(ExperimentSpec(model="KWL", layer="Orthogon", dataset="cifar10"))
        out = m(torch.empty(2, 3, 32, 32))
    assert out.device.type == "meta" and out.shape == (2, 10)

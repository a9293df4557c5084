"""Eval-mode caches of the reparameterised layers are refreshed automatically and never stale."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch

from lipcore import layers as L
from lipcore.layers import invalidate_caches
from lipcore.models import build
from lipcore.spec import ExperimentSpec

SPECS = [
    dict(model="KWL", layer=layer, scale="small", dataset="cifar10", loss="multimargin", gamma=2.0)
    for layer in ("Sandwich", "Orthogon", "Aol")
] + [
    dict(model="DNN", dataset="cifar10", gamma=1.0),
    dict(model="Toy", layer="SLL", gamma=3.0),
]


def small_model(spec: dict) -> torch.nn.Module:
    if spec["model"] == "DNN":  # the full DNN is large; its layers are the sandwich ones tested here
        return torch.nn.Sequential(
            L.SandwichConv(3, 4, 3, scale=1.0, input_size=8),
            L.SandwichConv(4, 4, 3, stride=2, input_size=8),
            torch.nn.Flatten(),
            L.SandwichFc(64, 16, scale=1.0),
            L.LinearNormalized(16, 3),
        )
    return build(ExperimentSpec(**spec))


def inputs(model: torch.nn.Module, spec: dict) -> torch.Tensor:
    if spec["model"] == "Toy":
        return torch.linspace(-2, 2, 16)[:, None]
    size = 8 if spec["model"] == "DNN" else 32
    return torch.rand(8, 3, size, size)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s['model']}-{s.get('layer', 'Sandwich')}")
def test_eval_equals_train_after_optimizer_step_without_extra_forward(spec) -> None:
    model = small_model(spec)
    x = inputs(model, spec)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    model.eval()
    stale = model(x)  # fills the caches
    model.train()
    for _ in range(2):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    model.eval()  # no dummy forward: the first eval call must see the new parameters
    out_eval = model(x)
    model.train()
    with torch.no_grad():
        out_train = model(x)
    assert not torch.allclose(stale, out_eval)
    torch.testing.assert_close(out_eval, out_train, rtol=1e-5, atol=1e-6)


def test_every_parameter_gets_a_gradient() -> None:
    """alphas and psis included: an optimizer made right after construction trains all of them."""
    model = build(ExperimentSpec(model="KWL", layer="Sandwich", scale="small", dataset="cifar10"))
    model(torch.rand(4, 3, 32, 32)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_load_state_dict_refreshes_cache() -> None:
    a, b = L.SandwichFc(5, 4).eval(), L.SandwichFc(5, 4).eval()
    x = torch.randn(3, 5)
    a(x)
    a.load_state_dict(b.state_dict())
    torch.testing.assert_close(a(x), b(x))


def test_dtype_and_device_moves_refresh_cache() -> None:
    layer = L.OrthogonConv(2, 3, 3, input_size=8).eval()
    x = torch.randn(2, 2, 8, 8)
    y32 = layer(x)
    layer.double()
    y64 = layer(x.double())
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64.float(), y32, rtol=1e-5, atol=1e-5)
    layer.to("cpu").float()
    torch.testing.assert_close(layer(x), y32, rtol=1e-6, atol=1e-6)


def test_in_place_no_grad_edit_refreshes_cache() -> None:
    layer = L.SandwichLin(4, 3).eval()
    x = torch.randn(2, 4)
    before = layer(x)
    with torch.no_grad():
        layer.weight.mul_(-1.0).add_(0.1)
    after = layer(x)
    layer.train()
    torch.testing.assert_close(after, layer(x))
    assert not torch.allclose(before, after)


def test_invalidate_caches_frees_and_recomputes() -> None:
    """invalidate_caches only frees memory now: the next eval forward recomputes the same values."""
    model = torch.nn.Sequential(L.OrthogonLin(4, 4)).eval()
    x = torch.randn(2, 4)
    model(x)
    model[0].weight.data.mul_(-1.0)
    invalidate_caches(model)
    out = model(x)
    model.train()
    torch.testing.assert_close(out, model(x))


def test_deepcopy_does_not_share_cache() -> None:
    layer = L.SandwichFc(3, 3).eval()
    x = torch.randn(2, 3)
    layer(x)
    clone = copy.deepcopy(layer)
    assert clone._cache is None
    with torch.no_grad():
        clone.weight.add_(1.0)
    assert not torch.allclose(clone(x), layer(x))


def test_eval_cache_is_detached_and_reused() -> None:
    layer = L.SandwichConv(2, 2, 3, input_size=8).eval()
    x = torch.randn(1, 2, 8, 8)
    layer(x)
    first = layer._cache.value
    layer(x)
    assert layer._cache.value is first
    assert all(not t.requires_grad for t in first)


# ---- writes the autograd version counter does not see (issue 8) -------------------------------

FAMILIES = {
    "SandwichFc": lambda: L.SandwichFc(5, 6),
    "SandwichLin": lambda: L.SandwichLin(5, 3),
    "SandwichConv": lambda: L.SandwichConv(2, 3, 3, input_size=6),
    "SandwichConvLin": lambda: L.SandwichConvLin(2, 3, 3, input_size=6),
    "OrthogonFc": lambda: L.OrthogonFc(5, 6),
    "OrthogonConv": lambda: L.OrthogonConv(2, 3, 3, input_size=6),
    "AolFc": lambda: L.AolFc(5, 6),
    "AolConv": lambda: L.AolConv(2, 3, 3),
    "SLLBlockFc": lambda: L.SLLBlockFc(5, 7),
    "SLLBlockConv": lambda: L.SLLBlockConv(2, 3, 3),
    "LinearNormalized": lambda: L.LinearNormalized(5, 3),
}


def family_input(layer: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(5)
    if isinstance(layer, (L.SandwichConv, L.SandwichConvLin, L.OrthogonConv, L.AolConv, L.SLLBlockConv)):
        return torch.randn(4, 2, 6, 6)
    return torch.randn(4, 5)


def fresh_copy(layer: torch.nn.Module) -> torch.nn.Module:
    """A new module holding the same parameter values, as if loaded from a checkpoint."""
    torch.manual_seed(123)
    clone = copy.deepcopy(layer)
    clone.load_state_dict({k: v.clone() for k, v in layer.state_dict().items()})
    return clone.eval()


def _fused_adam(layer: torch.nn.Module, x: torch.Tensor) -> None:
    # gradients from a training forward, then the fused step while the layer is in eval mode
    # with a filled cache: fused Adam's kernel writes without bumping the version counter (the
    # value check sees it anyway; lipcore.layers.reparam's post-step hook bumps the counters)
    opt = torch.optim.Adam(layer.parameters(), lr=0.3, fused=True)
    layer.train()
    layer(x).square().sum().backward()
    layer.eval()
    layer(x)
    versions = [p._version for p in layer.parameters()]
    opt.step()
    assert all(p._version > v for p, v in zip(layer.parameters(), versions)), "a fused step went unversioned"


def _numpy_write(layer: torch.nn.Module, x: torch.Tensor) -> None:
    for p in layer.parameters():
        view = p.detach().numpy()
        view *= -1.5
        view += 0.2


def _data_write(layer: torch.nn.Module, x: torch.Tensor) -> None:
    for p in layer.parameters():
        p.data.mul_(0.5).add_(0.3)


def _copy_no_grad(layer: torch.nn.Module, x: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen).abs() + 0.1)


WRITES = {"fused_adam": _fused_adam, "numpy": _numpy_write, "data": _data_write, "copy_no_grad": _copy_no_grad}


@pytest.mark.parametrize("write", list(WRITES), ids=str)
@pytest.mark.parametrize("family", list(FAMILIES), ids=str)
def test_eval_forward_after_unversioned_write_equals_fresh_copy(family, write) -> None:
    """Every write path, then an eval forward: bit-identical to a freshly loaded copy."""
    torch.manual_seed(0)
    layer = FAMILIES[family]().eval()
    x = family_input(layer)
    before = layer(x)  # fills the cache
    WRITES[write](layer, x)
    layer.eval()
    after = layer(x)
    expected = fresh_copy(layer)(x)
    assert torch.equal(after, expected), (after - expected).abs().max()
    assert not torch.equal(before, after)


def test_sll_forward_uses_one_reparameterisation() -> None:
    """The SLL forward takes W, b and t from effective(), never a live W beside a cached t."""
    block = L.SLLBlockFc(4, 5).eval()
    x = torch.randn(3, 4)
    block(x)
    w, b, t = block._cache.value
    expected = x - torch.nn.functional.linear(t * torch.relu(torch.nn.functional.linear(x, w, b)), w.T)
    assert torch.equal(block(x), expected)


# ---- what an eval forward derives from the weights alone, and checks by version (issue 20) -----

CONV_FAMILIES = ["SandwichConv", "SandwichConvLin", "OrthogonConv"]


@pytest.mark.parametrize("family", CONV_FAMILIES, ids=str)
def test_cached_block_matrices_give_bit_identical_outputs(family) -> None:
    """The block matrices kept beside the eval cache are those the uncached path builds (the
    grad-enabled path: a float64 forward under no_grad takes fourier._apply_certify, which builds none)."""
    from lipcore.layers.fourier import block_matrix

    torch.manual_seed(1)
    layer = FAMILIES[family]().double().eval()
    x = family_input(layer).double()
    first = layer(x)  # fills the cache and its block matrices
    assert layer._cache.derived, "no block matrix was kept"
    for (i, fn), blk in layer._cache.derived.items():
        assert fn is block_matrix and torch.equal(blk, block_matrix(layer._cache.value[i]))
    again = layer(x)
    with torch.no_grad():
        certify_cached = layer(x)
    layer.train()
    uncached = layer(x).detach()
    with torch.no_grad():
        certify_uncached = layer(x)
    assert torch.equal(first, again) and torch.equal(again, uncached)
    assert torch.equal(certify_cached, certify_uncached)
    assert torch.allclose(certify_cached, first, rtol=0, atol=1e-12 * float(first.detach().abs().max()))


def _state_dict_load(layer: torch.nn.Module, x: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(3)
    layer.load_state_dict({k: torch.randn(v.shape, generator=gen).abs() + 0.1 for k, v in layer.state_dict().items()})


def _optimizer_step(fused: bool, sgd: bool = False) -> Callable[[torch.nn.Module, torch.Tensor], None]:
    def write(layer: torch.nn.Module, x: torch.Tensor) -> None:
        if sgd:
            opt: torch.optim.Optimizer = torch.optim.SGD(layer.parameters(), lr=0.3)
        else:
            opt = torch.optim.Adam(layer.parameters(), lr=0.3, fused=fused)
        layer.train()
        layer(x).square().sum().backward()
        layer.eval()
        opt.step()

    return write


def _reassign(layer: torch.nn.Module, x: torch.Tensor) -> None:
    layer.bias = torch.nn.Parameter(layer.bias.detach() * -1.0 + 0.1)


def _move(layer: torch.nn.Module, x: torch.Tensor) -> None:
    # to float32 and back: new storage holding the float32-rounded values
    layer.float()
    layer.double()


VERSIONED_WRITES = {
    "load_state_dict": _state_dict_load,
    "adam": _optimizer_step(fused=False),
    "fused_adam": _optimizer_step(fused=True),
    "sgd": _optimizer_step(fused=False, sgd=True),
    "copy_no_grad": _copy_no_grad,
    "reassign": _reassign,
    "to": _move,
}


@pytest.mark.parametrize("write", list(VERSIONED_WRITES), ids=str)
@pytest.mark.parametrize("family", ["SandwichFc", *CONV_FAMILIES, "SLLBlockConv"], ids=str)
def test_version_checked_cache_sees_every_versioned_write(family, write) -> None:
    torch.manual_seed(0)
    layer = FAMILIES[family]().double().eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(1e-12)  # values a float32 round trip changes
    L.check_caches_by_version(layer)
    x = family_input(layer).double()
    before = layer(x)
    assert layer._cache.snapshot is None  # no copy of the parameters is kept
    cache = layer._cache
    assert torch.equal(layer(x), before) and layer._cache is cache  # and the cache is reused
    VERSIONED_WRITES[write](layer, x)
    layer.eval()
    after = layer(x)
    expected = fresh_copy(layer)(x)
    assert torch.equal(after, expected), (after - expected).abs().max()
    assert not torch.equal(before, after)


def test_version_checking_is_not_copied() -> None:
    """A copy goes to a new owner, who may write through .data: it checks values again."""
    layer = L.SandwichConv(2, 3, 3, input_size=6).eval()
    L.check_caches_by_version(layer)
    x = torch.randn(2, 2, 6, 6)
    layer(x)
    clone = copy.deepcopy(layer)
    clone(x)
    clone.weight.data.mul_(-1.0)
    expected = fresh_copy(clone)(x)
    assert torch.equal(clone(x), expected)
    assert clone._cache.snapshot is not None


@pytest.mark.parametrize("write", list(VERSIONED_WRITES), ids=str)
def test_float64_copy_of_a_version_checked_source_sees_every_versioned_write(write) -> None:
    """lipcore.certify.check_source_by_version: the certify processes' float64 copy is reused
    without comparing values, and rebuilt after any versioned write to its source."""
    from lipcore.certify import _F64, check_source_by_version, float64_model

    torch.manual_seed(0)
    source = FAMILIES["SandwichConv"]().double().eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1e-12)  # values a float32 round trip changes
    x = family_input(source).double()
    check_source_by_version(source)
    m64 = float64_model(source)
    assert float64_model(source) is m64 and _F64[source]["source"] == []  # reused; no copy of the values
    before = m64(x)
    VERSIONED_WRITES[write](source, x)
    source.eval()
    after = float64_model(source)
    assert after is not m64
    expected = fresh_copy(source)(x)
    assert torch.equal(after(x), expected) and not torch.equal(before, expected)

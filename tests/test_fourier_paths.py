"""The certify path of the circular layers (fourier._apply_certify, issue 20) against the real-block
path it replaces in float64 no-grad forwards: equal within 1e-12 relative, batched equal to single,
taken exactly when the dtype is float64 and grad is off.
"""

from __future__ import annotations

import pytest
import torch

from lipcore import layers as L
from lipcore.layers.fourier import _irfft2_freq_major, apply_response, kernel_fft


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("n", [5, 6, 7, 8, 16])
def test_irfft2_freq_major_is_irfft2(n: int) -> None:
    torch.manual_seed(n)
    x = torch.randn(3, 4, n, n, dtype=torch.float64)
    z = torch.fft.rfft2(x).permute(2, 3, 0, 1).contiguous()  # (n, w, b, c): Hermitian by construction
    assert _rel(_irfft2_freq_major(z, n), torch.fft.irfft2(z.permute(2, 3, 0, 1), s=(n, n))) < 1e-14
    assert _rel(_irfft2_freq_major(z, n), x) < 1e-14


@pytest.mark.parametrize("n", [6, 7, 8])
@pytest.mark.parametrize("with_bias", [False, True])
def test_certify_path_equals_real_block_path(n: int, with_bias: bool) -> None:
    torch.manual_seed(10 + n)
    m = kernel_fft(torch.randn(5, 3, 3, 3, dtype=torch.float64), n)
    bias = torch.randn(5, dtype=torch.float64) if with_bias else None
    x = torch.randn(4, 3, n, n, dtype=torch.float64)
    block = apply_response(m, x, n, bias)  # grad enabled: the real-block path
    with torch.no_grad():
        fast = apply_response(m, x, n, bias)
        single = torch.cat([apply_response(m, x[i : i + 1], n, bias) for i in range(len(x))])
    assert _rel(fast, block) < 1e-12
    assert _rel(single, fast) < 1e-12


def test_path_depends_on_dtype_and_grad_mode_only() -> None:
    """float64 eval under no_grad builds no block matrix; float32, or grad enabled, keeps the path
    (and the outputs, bit for bit) it had."""
    torch.manual_seed(2)
    layer = L.SandwichConv(3, 4, 3, input_size=6).double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        layer(x)
    assert layer._cache is not None and not layer._cache.derived
    layer(x)
    assert layer._cache.derived  # the grad-enabled path keeps its block matrices
    layer32 = L.SandwichConv(3, 4, 3, input_size=6).eval()
    x32 = x.float()
    with torch.no_grad():
        a = layer32(x32)
    assert torch.equal(a, layer32(x32).detach())


@pytest.mark.parametrize("layer", ["Sandwich", "Orthogon", "Aol"])
def test_an_empty_batch_is_an_empty_answer(layer: str) -> None:
    """MKL's FFTs refuse a batch of 0 images; the circular layers answer it with 0 outputs (a filter
    that kept no input is not an error), in float32, in float64 and through the certificate."""
    from lipcore.certify import model_certificate
    from lipcore.models import build
    from lipcore.spec import ExperimentSpec

    model = build(ExperimentSpec(model="KWL", layer=layer, scale="small", dataset="cifar10")).eval()
    empty = torch.zeros(0, 3, 32, 32)
    assert model(empty).shape == (0, 10)
    assert model.double()(empty.double()).shape == (0, 10)
    cert = model_certificate(model.float(), empty)
    assert cert.radius.shape == cert.predicted.shape == (0,)

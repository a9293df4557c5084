"""The fast paths of the conv layers equal the plain formulas they replace (float64).

A pointwise stride-2 layer runs as one 2x2 stride-2 convolution with `scale` folded into its kernel
(instead of scale, pixel_unshuffle, 1x1 convolution), and a per-frequency product adds its bias at
the DC frequency of the spectrum (instead of to every pixel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lipcore import layers as L
from lipcore.layers.fourier import apply_response, kernel_fft


def test_pointwise_stride2_is_unshuffle_then_pointwise() -> None:
    torch.manual_seed(5)
    layer = L.SandwichConvLin(3, 5, 3, stride=2, scale=1.7, input_size=8).double()
    (m,) = layer.effective()
    assert m.dim() == 2  # a 1x1 kernel after space-to-depth: one real channel map
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    plain = F.conv2d(F.pixel_unshuffle(1.7 * x, 2), m[:, :, None, None]) + layer.bias[:, None, None]
    assert torch.allclose(layer(x), plain, atol=1e-12)


def test_bias_at_dc_is_bias_everywhere() -> None:
    torch.manual_seed(6)
    n = 6
    m = kernel_fft(torch.randn(4, 3, 3, 3, dtype=torch.float64), n)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, n, n, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(2, 4, n, n, dtype=torch.float64)
    fast, plain = apply_response(m, x, n, bias), apply_response(m, x, n) + bias[:, None, None]
    assert torch.allclose(fast, plain, atol=1e-12)
    g_fast = torch.autograd.grad((fast * probe).sum(), (x, bias))
    g_plain = torch.autograd.grad((plain * probe).sum(), (x, bias))
    for a, b in zip(g_fast, g_plain):
        assert torch.allclose(a, b, atol=1e-12)

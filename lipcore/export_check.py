"""The bound an export records, verified on exactly the weights it writes, and its float32 rounding.

`lipcore.export.standard_model` computes the effective weights in float64 and rounds them once to
float32, the file's dtype. This module then re-derives, in float64, a Lipschitz bound of the
network those *rounded* tensors define (`exported_bound`), and an a-priori bound on the rounding
error of running it in float32 (`exported_rounding`, lipcore.layers.rounding's rules applied to
the standard operators), so `certify_onnx` certifies the file's own network:

- Linear: an upper bound on ||W||_2 (lipcore.layers.bounds.spectral_norm); zero-padded Conv2d:
  ||W||_2 of a 1x1 kernel, else Schur's test (bounds.aol_conv_bound);
- circular convolutions: the norm of the circular convolution with the rounded per-frequency
  maps (max_f ||M(f)||_2 of the real operator), plus, for `CircularDFT`, the effect of the
  float32-rounded DFT matrices (sum over its five stages of ||rounded - exact|| times the norms of
  the other stages);
- sandwich cores and SLL blocks: their defining inequalities (bounds.sandwich_bound, sll_bound) on
  the rounded weights (with the psi / q the layer carried), plus ||M|| times the rounding of
  folding `scale` into N / t into the transposed kernel.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from lipcore.certify import _module_bound, rounding_model
from lipcore.layers import bounds as B
from lipcore.layers.fourier import kernel_fft
from lipcore.layers.ops import CircularDFT, Mul, Residual, SandwichCore, SLLFc, dft_matrices
from lipcore.layers.rounding import U32, U64, Track, abs_gain, conv_gain, norm


def units(net: nn.Module) -> list[nn.Module]:
    """The exported network as a flat list of the modules the rules below know (Sequentials opened,
    except a CircularPad2d + Conv2d pair, which is one circular convolution)."""
    if isinstance(net, nn.Sequential) and not _is_circular_conv(net):
        return [u for m in net for u in units(m)]
    return [net]


def _is_circular_conv(m: Any) -> bool:
    return isinstance(m, nn.Sequential) and len(m) == 2 and isinstance(m[0], nn.CircularPad2d)


def _f64(t: Tensor) -> Tensor:
    return t.detach().to(torch.float64)


# ---- bounds ---------------------------------------------------------------------------------------
def _dft_stages(m: Any) -> list[Tensor]:
    """The five real matrices of a CircularDFT (as float64), each the operator of one stage."""
    cat = torch.cat
    fwd_w = cat((_f64(m.cw), _f64(m.sw)), 1)  # x -> (x cw, x sw)
    ch, sh = _f64(m.ch), _f64(m.sh)
    fwd_h = cat((cat((ch, sh), 1), cat((-sh, ch), 1)), 0)  # (xr, xi) -> (yr, yi)
    inv_h = cat((cat((ch, -sh), 1), cat((sh, ch), 1)), 0)
    inv_w = cat((_f64(m.ar), _f64(m.ai)), 0)  # (ur, ui) -> y
    return [fwd_w, fwd_h, inv_h, inv_w]


def _exact_dft_stages(m: Any) -> list[Tensor]:
    exact = CircularDFT.__new__(CircularDFT)
    nn.Module.__init__(exact)
    for name, value in dft_matrices(m.n).items():
        setattr(exact, name, value)
    return _dft_stages(exact)


def _dft_response(m: Any) -> Tensor:
    """The per-frequency complex maps (F, out, in) of a CircularDFT's rounded weights."""
    return torch.complex(_f64(m.mr), _f64(m.mi)).transpose(1, 2)


def _dft_deviation(m: Any, inner: float) -> float:
    """Upper bound on ||CircularDFT with its float32 DFT matrices - the same with exact ones||,
    given `inner` >= the norm of its per-frequency stage."""
    got, exact = _dft_stages(m), _exact_dft_stages(m)
    norms = [B.spectral_norm(s) for s in got]
    norms_exact = [B.spectral_norm(s) for s in exact]
    stage_norms = [norms[0], norms[1], inner, norms[2], norms[3]]
    exact_norms = [norms_exact[0], norms_exact[1], inner, norms_exact[2], norms_exact[3]]
    diffs = [B.spectral_norm(g - e) + 4 * U64 * abs_gain(g) for g, e in zip(got, exact)]
    total = 0.0
    for i, d in zip((0, 1, 3, 4), diffs):  # telescoping: stages after i rounded, before i exact
        total += d * math.prod(stage_norms[i + 1 :]) * math.prod(exact_norms[:i])
    return total


def _circular_maps(m: Any) -> tuple[Tensor, float]:
    """(per-frequency maps, deviation) of a circular convolution unit, or a 1x1 conv's matrix."""
    if isinstance(m, CircularDFT):
        resp = B.hermitian_response(_dft_response(m), m.n)
        return resp, _dft_deviation(m, B.spectral_norm(_dft_response(m)))
    if _is_circular_conv(m):
        k = _f64(m[1].weight)
        n = k.shape[-1]
        # (the float64 FFT of the kernel is off by ~n^2 1e-16 relative: allowance 1e-12)
        resp = B.hermitian_response(kernel_fft(k, n), n)
        return resp, 1e-12 * B.spectral_norm(resp)
    if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1):
        return _f64(m.weight[:, :, 0, 0]), 0.0
    raise TypeError(f"not a circular convolution: {type(m).__name__}")


def unit_bound(m: Any) -> float:
    """Verified l2 Lipschitz bound (float64) of one exported unit, from its stored weights."""
    if isinstance(m, (nn.ReLU, nn.Flatten, nn.Identity, nn.PixelUnshuffle)):
        return 1.0
    if isinstance(m, Mul):
        return abs(m.c)
    if isinstance(m, nn.AvgPool2d):
        return _module_bound(m)
    if isinstance(m, nn.Linear):
        return B.spectral_norm(m.weight)
    if isinstance(m, nn.Conv2d):
        if m.kernel_size == (1, 1):
            return B.spectral_norm(m.weight[:, :, 0, 0])
        return B.aol_conv_bound(m.weight, m.weight)
    if isinstance(m, CircularDFT) or _is_circular_conv(m):
        resp, dev = _circular_maps(m)
        return B.spectral_norm(resp) + dev
    if isinstance(m, SandwichCore):
        return _sandwich_bound(m)
    if isinstance(m, SLLFc):
        return B.sll_bound(m.weight, m.t, torch.tensor(m.schur_q), conv=False)
    if isinstance(m, Residual):
        f: Any = m.f
        conv, up = f[0], f[2]
        k, t = _f64(conv.weight), torch.tensor(m.sll_t, dtype=torch.float64)
        folded = _f64(up.weight) - k * t[:, None, None, None]
        dev = (conv_gain(folded) + 4 * U64 * conv_gain(_f64(up.weight))) * conv_gain(k)
        return B.sll_bound(k, t, torch.tensor(m.schur_q), conv=True) + dev
    raise TypeError(f"no verified bound for exported {type(m).__name__}")


def _sandwich_bound(m: Any) -> float:
    """|s| * sandwich_bound(M, N / s) of the rounded halves, plus the rounding of N / s and of the
    DFT matrices (a sandwich core computes a(relu(b(x))), b holding s N)."""
    s, psi = m.scale, torch.tensor(m.psi, dtype=torch.float64)
    if isinstance(m.a, nn.Linear):
        mm, nn_, dev_a, dev_b = _f64(m.a.weight), _f64(m.b.weight), 0.0, 0.0
    else:
        mm, dev_a = _circular_maps(m.a)
        nn_, dev_b = _circular_maps(m.b)
    n_over_s = nn_ / s
    bound = abs(s) * B.sandwich_bound(mm, n_over_s, psi)
    norm_m, norm_n = B.spectral_norm(mm), B.spectral_norm(nn_)
    # ||s (N / s) - N|| <= 2 u ||N||-ish, times ||M||; the DFT deviations of each half
    bound += norm_m * 4 * U64 * abs_gain(nn_) + dev_a * (norm_n + dev_b) + norm_m * dev_b
    return bound


def exported_bound(unit_list: list[nn.Module]) -> float:
    """Product of the units' verified bounds (float64, with its own rounding allowance)."""
    with torch.no_grad():
        bound = math.prod(unit_bound(m) for m in unit_list)
    return bound * (1 + 4 * len(unit_list) * U64)


# ---- float32 rounding ------------------------------------------------------------------------------
def _track(m: Any, t: Track, side: float) -> Track:
    """Continue `t` through unit m run in float arithmetic at t.u (inputs of spatial side `side`)."""
    if isinstance(m, (nn.ReLU, nn.Flatten, nn.Identity, nn.PixelUnshuffle)):
        return t
    if isinstance(m, Mul):
        return t.scale(m.c)
    if isinstance(m, nn.AvgPool2d):
        k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
        return t.linear(k / (m.divisor_override or k * k), k * k)
    if isinstance(m, nn.Linear):
        return t.linear(abs_gain(m.weight), m.in_features, norm(m.bias), lip=B.spectral_norm(m.weight))
    if isinstance(m, nn.Conv2d):
        terms = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        return t.linear(conv_gain(m.weight), terms, norm(m.bias) * side)
    if _is_circular_conv(m):
        t.ec, t.ed, t.mc, t.md = 2 * t.ec, 2 * t.ed, 2 * t.mc, 2 * t.md  # each pixel copied <= 4 times
        return _track(m[1], t, 2 * side)
    if isinstance(m, CircularDFT):
        return _track_dft(m, t)
    if isinstance(m, SandwichCore):
        return _track(m.a, _track(m.b, t, side), side)
    if isinstance(m, SLLFc):
        g = abs_gain(m.weight)
        branch = Track(t.u, t.ec, t.ed, t.mc, t.md).linear(g, m.weight.shape[1], norm(m.bias))
        branch = branch.scale(float(m.t.abs().max())).linear(g, m.weight.shape[0])
        return _sub(t, branch)
    if isinstance(m, Residual):
        f: Any = m.f
        conv, up = f[0], f[2]
        branch = _track(conv, Track(t.u, t.ec, t.ed, t.mc, t.md), side)
        branch = branch.linear(conv_gain(up.weight), up.in_channels * up.kernel_size[0] * up.kernel_size[1])
        return _sub(t, branch)
    raise TypeError(f"no rounding rule for exported {type(m).__name__}")


def _sub(t: Track, branch: Track) -> Track:
    """x - branch(x), where branch started from t's own values (so its error already holds t's)."""
    mc, md = t.mc + branch.mc, t.md + branch.md
    t.ec, t.ed = t.ec + branch.ec + t.u * mc, t.ed + branch.ed + t.u * md
    t.mc, t.md = mc * (1 + t.u), md * (1 + t.u)
    return t


def _track_dft(m: Any, t: Track) -> Track:
    """The five stages, each with its own G (local error) and spectral norm (propagation)."""
    n, half = m.n, m.bins
    stages = _dft_stages(m)
    block = torch.cat((torch.cat((_f64(m.mr), _f64(m.mi)), 2), torch.cat((-_f64(m.mi), _f64(m.mr)), 2)), 1)
    sn = B.spectral_norm
    t.linear(abs_gain(stages[0]), n, lip=sn(stages[0]))
    t.linear(abs_gain(stages[1]), 2 * n, lip=sn(stages[1]))
    t.linear(abs_gain(block), 2 * m.c_in, lip=sn(block))
    t.linear(abs_gain(stages[2]), 2 * n, lip=sn(stages[2]))
    bias = norm(m.bias) * n if m.bias is not None else 0.0
    return t.linear(abs_gain(stages[3]), 2 * half, bias, lip=sn(stages[3]))


class InputCast(nn.Identity):
    """The cast of a float64 input to the file's float32: relative error u."""


def unit_error(m: Any, u: float, in_shape: tuple[int, ...]) -> tuple[float, float]:
    """(c, d) of one exported unit at roundoff u (see lipcore.layers.rounding.local_error)."""
    if isinstance(m, InputCast):
        return u, 0.0
    side = math.sqrt(in_shape[-1] * in_shape[-2]) if len(in_shape) >= 3 else 1.0
    with torch.no_grad():
        t = _track(m, Track(u), side)
    return t.ec, t.ed


def exported_rounding(unit_list: list[nn.Module], x0: Tensor) -> Any:
    """lipcore.certify.RoundingModel of the exported network run in float32 (input cast included)."""
    with torch.no_grad():
        mods = [InputCast(), *unit_list]
        lips = [1.0] + [unit_bound(m) for m in unit_list]
        return rounding_model(mods, lips, x0, U32, local=unit_error)

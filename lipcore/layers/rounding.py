"""A-priori bounds on the rounding error of a network's forward pass, for certificates near ties.

A certificate compares computed logits; the exact network on the served weights differs from them
by the forward's rounding. For each module we bound that local error as an affine function of the
norm of its (computed) input: ||fl(m(x)) - m(x)|| <= c ||x|| + d, for every x, at unit roundoff u
(2^-53 for float64, 2^-24 for float32). The rules, standard error analysis (Higham, Accuracy and
Stability of Numerical Algorithms, 2nd ed.):
- y = W v + b with k-term inner products: |error| <= gamma_{k+1} (|W| |v| + |b|) entrywise, and
  || |W| |v| || <= G(W) ||v|| with G(W) = sqrt(max row sum * max column sum of |W|) (Schur's test,
  also >= ||W||_2, so it bounds the propagation of earlier errors too);
- a multiply by a scalar s: u |s| ||v||; ReLU, padding, flattening, reshapes: exact;
- a 2-D real FFT of N = n^2 points: relative 2-norm error <= 2 (log2 N + 2) eta, eta = 8 u (Higham
  Thm 24.2 for the Cooley-Tukey FFT, eta = mu + gamma_4 (sqrt2 + mu), with the twiddle error mu
  taken as 2u and a further factor 2 for pocketfft's mixed radices).
Inside a module the magnitudes of intermediate values are bounded with G (`Track`); across modules
the network uses the modules' verified Lipschitz bounds (lipcore.certify.rounding_model).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lipcore.layers.bounds import gamma_k, hermitian_response

U64 = 2.0**-53
U32 = 2.0**-24


def gam(k: int, u: float) -> float:
    """gamma_k at unit roundoff u (inf when k u >= 1/2, no bound)."""
    return k * u / (1 - k * u) if k * u < 0.5 else math.inf


def abs_gain(m: Tensor) -> float:
    """G(m) >= || |m| ||_2 (>= ||m||_2), max over a batch (..., r, c) of real or complex matrices."""
    a = m.detach().abs().to(torch.float64)
    if a.numel() == 0:
        return 0.0
    rows = a.sum(-1).amax()
    cols = a.sum(-2).amax()
    return math.sqrt(float(rows) * float(cols)) * (1 + gamma_k(max(a.shape[-1], a.shape[-2]) + 2))


def gram_norm(m: Tensor) -> float:
    """Upper bound on max ||m_i||_2 over a batch of matrices: sqrt of Gershgorin's max row sum of
    |m m^H| (with the Gram's rounding), no eigensolver (bounds.spectral_norm may call eigvalsh)."""
    m = m.detach().to(torch.complex128 if m.is_complex() else torch.float64)
    if m.shape[-2] > m.shape[-1]:
        m = m.mH
    gram = (m @ m.mH).abs().sum(-1).amax()
    a = m.abs()
    err = gamma_k(m.shape[-1]) * (a @ a.mT).sum(-1).amax()
    return math.sqrt(float(gram + err)) * (1 + 4 * U64)


def conv_gain(k: Tensor) -> float:
    """G of a convolution (or its transpose) with kernel k (out, in, kh, kw), any padding."""
    a = k.detach().abs().to(torch.float64)
    return abs_gain(a.sum((2, 3)))  # row/column sums of |operator| <= sums over the taps


def norm(t: Tensor | None) -> float:
    return 0.0 if t is None else float(t.detach().to(torch.float64).norm())


def fft_rel(n: int, u: float) -> float:
    """Relative 2-norm error bound of an n x n 2-D real FFT (or its inverse) at unit roundoff u."""
    return 2 * (math.log2(max(n * n, 2)) + 2) * 8 * u


@dataclass
class Track:
    """Error (ec ||x|| + ed) and magnitude (mc ||x|| + md) bounds of a module's computed values."""

    u: float
    ec: float = 0.0
    ed: float = 0.0
    mc: float = 1.0
    md: float = 0.0

    def scale(self, s: float) -> Track:
        s = abs(s)
        if s != 1.0:
            self.ec, self.ed = s * self.ec + self.u * s * self.mc, s * self.ed + self.u * s * self.md
            self.mc, self.md = s * self.mc, s * self.md
        return self

    def linear(self, gain: float, k: int, bias: float = 0.0, extra_rel: float = 0.0, lip: float | None = None) -> Track:
        """v -> W v + b with k-term sums (plus `extra_rel` relative error, e.g. of FFTs); gain =
        G(W) >= || |W| ||_2 for the local error, lip >= ||W||_2 (default gain) for propagation."""
        lip = gain if lip is None else lip
        g = gam(k + 1, self.u) + extra_rel
        lc, ld = g * gain * self.mc, g * (gain * self.md + bias)
        self.ec, self.ed = lip * self.ec + lc, lip * self.ed + ld
        self.mc, self.md = lip * self.mc + lc, lip * self.md + bias + ld
        return self

    def residual(self, branch: Track) -> Track:
        """x - branch(x): both errors, plus the subtraction's rounding."""
        mc, md = self.mc + branch.mc, self.md + branch.md
        self.ec, self.ed = self.ec + branch.ec + self.u * mc, self.ed + branch.ed + self.u * md
        self.mc, self.md = mc * (1 + self.u), md * (1 + self.u)
        return self

    @property
    def affine(self) -> tuple[float, float]:
        return self.ec, self.ed


def fft_conv(t: Track, m: Tensor, n: int, bias: Tensor | None) -> Track:
    """irfft2(M(f) rfft2(x)) + bias, per-frequency M (F, o, i) complex or one real (o, i) map."""
    if m.dim() == 2:
        return t.linear(abs_gain(m), m.shape[1], norm(bias) * n)
    from lipcore.layers.fourier import block_matrix

    r = fft_rel(n, t.u)
    # in the unitary-normalised frequency domain the per-frequency product has gain max_f G(block)
    # (half spectrum: conjugate columns count twice, at most sqrt2 on an error); the two FFTs add
    # r each; the bias enters as n^2 b at frequency 0, an image of norm n ||b||. The same bound
    # covers fourier._apply_certify (float64 no-grad): its complex bmm sums, per real output
    # component, the same 2i real products as the real-block form (any order: gamma_2i still), and
    # its 1-D inverse FFTs are the row-column steps of the 2-D one (bit-identical with MKL's at
    # n = 16, 32)
    g = math.sqrt(2) * abs_gain(block_matrix(m.to(torch.complex128)))
    lip = gram_norm(hermitian_response(m, n)) * (1 + 2 * r)
    return t.linear(g, 2 * m.shape[2], norm(bias) * n, extra_rel=2 * r, lip=lip)


def _fourier_enter(layer: Any, t: Track) -> Track:
    return t.scale(layer.scale)  # pixel_unshuffle is a permutation


def _sandwich_fc(layer: Any, u: float, side: float = 1.0) -> tuple[float, float]:
    a_out, b_in = layer.effective()
    t = Track(u).scale(layer.scale).linear(abs_gain(b_in), b_in.shape[1], norm(layer.bias))
    return t.linear(abs_gain(a_out), a_out.shape[0]).affine


def _linear(layer: Any, u: float, side: float = 1.0) -> tuple[float, float]:
    (w,) = layer.effective()
    return Track(u).scale(layer.scale).linear(abs_gain(w), w.shape[1], norm(layer.bias)).affine


def _sandwich_conv(layer: Any, u: float, side: float = 1.0) -> tuple[float, float]:
    a_out, b_in = layer.effective()
    t = fft_conv(_fourier_enter(layer, Track(u)), b_in, layer.n, layer.bias)
    return fft_conv(t, a_out, layer.n, None).affine


def _fourier_lin(layer: Any, u: float, side: float = 1.0) -> tuple[float, float]:
    (m,) = layer.effective()
    return fft_conv(_fourier_enter(layer, Track(u)), m, layer.n, layer.bias).affine


def _aol_conv(layer: Any, u: float, side: float) -> tuple[float, float]:
    (k,) = layer.effective()
    terms = k.shape[1] * k.shape[2] * k.shape[3]
    return Track(u).scale(layer.scale).linear(conv_gain(k), terms, norm(layer.bias) * side).affine


def _sll(layer: Any, u: float, side: float, conv: bool) -> tuple[float, float]:
    w, b, tt = layer.effective()
    gain = conv_gain(w) if conv else abs_gain(w)
    terms = w[0].numel()
    branch = Track(u).linear(gain, terms, norm(b) * side)
    branch = branch.scale(float(tt.abs().max()) if tt.numel() else 0.0)
    branch = branch.linear(gain, w.shape[0] * (w.shape[2] * w.shape[3] if conv else 1))
    return Track(u).residual(branch).affine


def _pool(layer: Any, u: float, side: float = 1.0) -> tuple[float, float]:
    k = layer.kernel_size if isinstance(layer.kernel_size, int) else layer.kernel_size[0]
    divisor = layer.divisor_override or k * k
    return Track(u).linear(k / divisor, k * k).affine


def _scaled(layer: Any, u: float, side: float = 1.0) -> tuple[float, float]:
    return Track(u).scale(layer.scale).affine


_EXACT = (nn.Flatten, nn.Identity, nn.ReLU, nn.Dropout, nn.PixelUnshuffle)


def _rules() -> dict[type, Callable[[nn.Module, float, float], tuple[float, float]]]:
    from lipcore.layers import aol, channels, normalized, orthogon, sandwich, sll

    return {
        sandwich.SandwichFc: _sandwich_fc,
        sandwich.SandwichLin: _linear,
        sandwich.SandwichConv: _sandwich_conv,
        sandwich.SandwichConvLin: _fourier_lin,
        orthogon.OrthogonFc: _linear,
        orthogon.OrthogonLin: _linear,
        orthogon.OrthogonConv: _fourier_lin,
        orthogon.OrthogonConvLin: _fourier_lin,
        aol.AolFc: _linear,
        aol.AolLin: _linear,
        aol.AolConv: _aol_conv,
        aol.AolConvLin: _aol_conv,
        normalized.LinearNormalized: _linear,
        sll.SLLBlockFc: lambda m, u, side: _sll(m, u, 1.0, False),
        sll.SLLBlockConv: lambda m, u, side: _sll(m, u, side, True),
        channels.PaddingChannels: _scaled,
        channels.PaddingFeatures: _scaled,
        channels.FirstChannel: _scaled,
        nn.AvgPool2d: _pool,
    }


def local_error(module: nn.Module, u: float, in_shape: tuple[int, ...]) -> tuple[float, float]:
    """(c, d): ||fl(module(x)) - module(x)|| <= c ||x|| + d for the module's forward at roundoff u,
    for inputs of per-sample shape `in_shape` (a bias image's norm is sqrt(H W) ||b||).

    Raises TypeError for a module without a rule (it then cannot be certified near ties)."""
    if isinstance(module, _EXACT):
        return 0.0, 0.0
    with torch.no_grad():
        rules = _rules()
        rule = next((rules[t] for t in type(module).__mro__ if t in rules), None)
        if rule is None:
            raise TypeError(f"no rounding-error rule for {type(module).__name__}")
        side = math.sqrt(in_shape[-1] * in_shape[-2]) if len(in_shape) >= 3 else 1.0
        return rule(module, u, side)


@dataclass(frozen=True)
class RoundingModel:
    """||computed logits - exact logits|| <= e0 + e1 ||x|| for every input x (model-input space),
    for the forward run at unit roundoff `unit`; see `rounding_model`."""

    unit: float
    e0: float
    e1: float

    def error(self, x: Tensor) -> Tensor:
        """(batch,) float64 error bounds at the inputs x (batch, ...)."""
        xn = x.detach().to(torch.float64).flatten(1).norm(dim=1)
        return self.e0 + self.e1 * xn

    def as_dict(self) -> dict[str, float]:
        return {"unit": self.unit, "abs": self.e0, "per_input_norm": self.e1}


def rounding_model(
    modules: Sequence[nn.Module], bounds: Sequence[float], x0: Tensor, unit: float, local: Any = None
) -> RoundingModel:
    """A-priori bound on the rounding error of the forward through `modules` (run in sequence).

    bounds: verified Lipschitz bounds L_k of the modules (exact maps); x0: one zero input (1, ...)
    in the modules' dtype; local(module, unit, shape) -> (c, d): the module's own rounding error
    c ||input|| + d (default lipcore.layers.rounding.local_error). With o_k = ||module_k-1(..(0))||
    computed, the computed input of module k has norm <= Lambda_<k ||x|| + o_k + 2 E_k-1 (E the
    error so far, which also bounds the rounding in o_k), so E_k = L_k E_k-1 + c_k (Lambda_<k ||x||
    + o_k + 2 E_k-1) + d_k, an affine recursion in ||x|| with non-negative coefficients.
    """
    local = local or local_error
    e0 = e1 = 0.0
    lam = 1.0
    x = x0
    with torch.no_grad():
        for module, lip in zip(modules, bounds):
            c, d = local(module, unit, tuple(x.shape[1:]))
            o = float(x.detach().to(torch.float64).norm()) * (1 + gamma_k(x.numel() + 2))  # (its own rounding)
            e1 = (lip + 2 * c) * e1 + c * lam
            e0 = (lip + 2 * c) * e0 + c * o + d
            lam *= lip
            x = module(x)
    grow = 1 + 8 * len(bounds) * unit  # rounding of this float64 recursion itself
    return RoundingModel(unit, e0 * grow, e1 * grow)

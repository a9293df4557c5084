"""Verified Lipschitz bounds of single layers, in float64, from the weights a layer actually applies.

Each reparameterised layer's `lipschitz_bound()` calls one of these on its `effective()` tensors;
`lipcore.certify.verified_bound` multiplies them along a network. Every function returns an upper
bound on the l2 Lipschitz constant of the map the layer's forward computes (in exact arithmetic on
the served weights), including a rounding allowance for the float64 arithmetic of the check itself.

Rounding allowances (U = 2^-53, the unit roundoff of float64):
- a sum of k products is off by at most gamma_k * (the same sum of absolute values), gamma_k =
  k U / (1 - k U) (Higham, Accuracy and Stability, eq. 3.5);
- a singular value or symmetric eigenvalue from LAPACK is exact for a matrix within p(n) U ||M||_2
  of the computed one; we take p(n) = 16 n, well above the small constants of the backward-error
  bounds of the QR/divide-and-conquer drivers.
These allowances are ~1e-13 relative for the sizes of the paper's networks.

Circular (FFT) convolutions: the forward multiplies the rfft2 of its input by one matrix M(f) per
frequency of the half spectrum and applies irfft2, which discards the imaginary part of the
self-conjugate columns (w = 0 and w = n/2). The real operator served is therefore the circular
convolution whose full spectrum is M at the other columns and the Hermitian part
(M(h, w) + conj(M(-h, w))) / 2 at those columns (`hermitian_response`); the DFT block-diagonalises
it, so its norm is the largest ||M_sym(f)||_2 and products of such operators are products per
frequency. The responses are symmetrised before anything is measured, so rounding that breaks the
symmetry is accounted for rather than assumed away.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

U = 2.0**-53


def gamma_k(k: int) -> float:
    """Higham's gamma_k = k U / (1 - k U): relative error bound of a k-term float64 dot product."""
    return k * U / (1 - k * U)


def svd_slack(m: Tensor) -> float:
    """Relative allowance on a computed largest singular value/eigenvalue of (..., r, c) matrices."""
    return 16 * max(m.shape[-2], m.shape[-1]) * U


def spectral_norm(m: Tensor) -> float:
    """Upper bound on max ||m_i||_2 over a batch (..., r, c) of real or complex matrices, float64.

    ||m||^2 = lambda_max(G) for the Gram G = m m^H on the smaller side (computed with entry errors
    at most gamma_k (|m||m|^H), k the larger side). Gershgorin's max row sum of |G| bounds
    lambda_max from above and max diag(G) from below; when the two agree to 1e-12 (an orthogonal
    or orthogonal-times-scale factor, as the reparameterised layers serve) that is the bound, with
    no eigensolver. Otherwise the largest eigenvalue of G (LAPACK, with its backward-error slack).
    A Gram product and at most one symmetric eigensolve cost a fraction of an SVD of m: the float64
    check of KWL-large's orthogonal layers spent minutes in per-frequency SVDs on a CPU.
    """
    m = _f64(m)
    if m.numel() == 0:
        return 0.0
    if m.shape[-2] > m.shape[-1]:
        m = m.mH
    k = m.shape[-1]
    gram = m @ m.mH  # (..., r, r), r = the smaller side
    absm = m.abs()
    ones = torch.ones(*absm.shape[:-1], 1, dtype=absm.dtype, device=absm.device)
    err = gamma_k(k) * float((absm @ (absm.mT @ ones)).max())  # ||error of G||_2 <= its max row sum
    rows = gram.abs().sum(-1)  # (..., r)
    upper = rows.amax(-1)  # Gershgorin, per matrix
    lower = torch.diagonal(gram, dim1=-2, dim2=-1).real.amax(-1)
    if bool((upper - lower <= 1e-12 * upper.clamp_min(torch.finfo(torch.float64).tiny)).all()):
        lam = float(upper.max())
    else:
        eig = float(torch.linalg.eigvalsh(gram).amax())
        lam = min(float(upper.max()), eig + svd_slack(gram) * float(upper.max()))
    return math.sqrt(max(lam + err, 0.0)) * (1 + 4 * U)


def hermitian_response(m: Tensor, n: int) -> Tensor:
    """The per-frequency matrices of the real operator irfft2(m @ rfft2(.)) on an n x n torus.

    m: (F, o, i) complex with F = n * (n // 2 + 1) in kernel_fft's "(h w)" order. Returns a copy
    with the self-conjugate columns replaced by their Hermitian part (see the module docstring).
    A real (o, i) matrix (a 1x1 kernel applied pointwise) is returned unchanged.
    """
    if m.dim() == 2:
        return m
    half = n // 2 + 1
    if m.shape[0] != n * half:
        raise ValueError(f"expected {n * half} frequencies for a {n}x{n} grid, got {m.shape[0]}")
    grid = m.reshape(n, half, *m.shape[1:]).clone()
    minus_h = (-torch.arange(n, device=m.device)) % n
    cols = [0] + ([n // 2] if n % 2 == 0 and n // 2 != 0 else [])
    for w in cols:
        col = grid[:, w]
        grid[:, w] = (col + col[minus_h].conj()) / 2
    return grid.reshape(m.shape)


def sandwich_bound(m_out: Tensor, n_in: Tensor, psi: Tensor) -> float:
    """Lipschitz bound of x -> M relu(N x + b) for a sandwich layer, from its served M and N.

    m_out: (..., out, out) with y = m_out z (per frequency for convolutions); n_in: (..., out, in);
    psi: (out,), the layer's log-scaling. Any positive Psi = diag(exp(psi)) gives an exact rewriting
    M = sqrt2 A^H Psi, N = sqrt2 Psi^-1 B with A := (M Psi^-1 / sqrt2)^H, B := Psi N / sqrt2, so the
    bound holds for the served M, N whatever psi is. Let eps = max(0, lambda_max(A A^H + B B^H) - 1)
    (the measured failure of [A B] to have orthonormal rows; 0 in exact arithmetic). Then

        ||y1 - y2|| <= sqrt(1 + 4 eps ||B||^2) ||x1 - x2||,   ||B||^2 <= lambda_max(A A^H + B B^H).

    Proof: write dz = N dx, dv = relu(z1) - relu(z2), u = Psi dv. ReLU is slope-restricted,
    dv_i (dz_i - dv_i) >= 0, so with weights 2 psi_i^2: 2 ||u||^2 <= 2 sqrt2 u^T B dx. Hence
    ||dy||^2 = 2 u^H A A^H u <= 2 u^H (I - B B^H) u + 2 eps ||u||^2
             <= ||dx||^2 - ||dx - sqrt2 B^H u||^2 + 2 eps ||u||^2,
    and |u_i| = psi_i |dv_i| <= psi_i |dz_i| gives ||u|| <= ||Psi N dx|| = sqrt2 ||B dx||.
    (For convolutions every operator is a circular convolution and Psi acts per channel, so the
    same algebra holds per frequency, with the maxima over frequencies.)
    """
    m_out, n_in = _f64(m_out), _f64(n_in)
    s = math.sqrt(2.0) * torch.exp(_f64(psi).real)  # sqrt2 Psi, (out,)
    a = (m_out / s[None, :]).mH  # A = (M (sqrt2 Psi)^-1)^H
    b = (s / 2)[:, None] * n_in  # B = Psi N / sqrt2
    c = torch.cat((a, b), dim=-1)  # [A B], (..., out, out + in)
    gram = c @ c.mH
    # entry error of the Gram: gamma_k (|C||C|^H); its norm <= its largest row sum (Gershgorin)
    absc = c.abs()
    ones = torch.ones(*absc.shape[:-1], 1, dtype=absc.dtype, device=absc.device)
    gram_err = gamma_k(c.shape[-1]) * float((absc @ (absc.mT @ ones)).max())
    # lambda_max by Gershgorin (largest absolute row sum): no eigensolver, no solver slack, and
    # tight here, since a working sandwich layer has G = I up to ~1e-16 per entry (1 + n 1e-16);
    # eigvalsh took seconds per layer (144 complex 256x256 Grams) for no better a bound.
    lam_max = float(gram.abs().sum(-1).max()) + gram_err
    eps = max(0.0, lam_max - 1.0)
    # ||B||^2 = lambda_max(B B^H) <= lambda_max(A A^H + B B^H) <= lam_max (B B^H is dominated by
    # the whole Gram): no SVD of B, which for a 2048 x 18432 layer took minutes on a CPU.
    return math.sqrt(1.0 + 4.0 * eps * max(lam_max, 0.0)) * (1 + 4 * U)


def schur_gram_bound(gram_abs_weighted: Tensor, err_weighted: Tensor, weights: Tensor) -> float:
    """max_i (sum_j |G_ij| w_j + err_i) / w_i: Schur's test, an upper bound on lambda_max(G) for
    symmetric G given entrywise |G|-sums weighted by any positive w (rows with w_i = 0 skipped)."""
    keep = weights > 0
    if not bool(keep.any()):
        return 0.0
    ratio = (gram_abs_weighted[keep] + err_weighted[keep]) / weights[keep]
    return float(ratio.max()) * (1 + 4 * U)


def aol_conv_bound(k_eff: Tensor, k_raw: Tensor) -> float:
    """Lipschitz bound of the zero-padded convolution with kernel k_eff (out, in, k, k).

    A zero-padded convolution on n x n is a circular one on a torus of side >= n + k - 1 between an
    isometric zero-embedding and a crop, so ||T||^2 <= lambda_max(T_c T_c^T), and the entries of
    T_c T_c^T are the kernel cross-correlations kkt[c, c', offset]. Schur's test with positive
    weights v_c bounds that by max_c sum_{c', offset} |kkt[c, c', offset]| v_c' / v_c. We take
    v = the AOL normalisers sqrt(sum |kkt_raw|) of the raw kernel (any positive weights are valid;
    these make the bound 1 in exact arithmetic when k_eff is AOL's rescaling of k_raw). Output
    channels whose effective kernel is exactly zero are rows of zeros and are skipped.
    """
    import torch.nn.functional as F

    ke, kr = _f64(k_eff), _f64(k_raw)
    kr = kr / kr.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    size = ke.shape[-1]
    kkt = F.conv2d(ke, ke, padding=size - 1).abs()  # (out, out, 2k-1, 2k-1)
    abs_kkt = F.conv2d(ke.abs(), ke.abs(), padding=size - 1)
    v = F.conv2d(kr, kr, padding=size - 1).abs().sum((1, 2, 3)).sqrt()
    nonzero = ke.flatten(1).abs().amax(1) > 0
    v = torch.where(nonzero, v.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(v))
    vv = torch.where(nonzero, v, torch.zeros_like(v))
    terms = ke.shape[1] * size * size
    sums = (kkt.sum((2, 3)) * vv[None, :]).sum(1)
    errs = gamma_k(terms) * (abs_kkt.sum((2, 3)) * vv[None, :]).sum(1)
    return math.sqrt(schur_gram_bound(sums, errs, v))


def sll_bound(w: Tensor, t: Tensor, q: Tensor, conv: bool, sums: tuple[Tensor, Tensor] | None = None) -> float:
    """Lipschitz bound of an SLL block x -> x - W^T diag(t) relu(W x + b), from its served W and t.

    w: (inner, features) or a kernel (inner, channels, k, k) (zero padding, transposed convolution
    back); t: (inner,) >= 0; q: (inner,), the layer's SLL weights (any positive weights are valid
    for the check; these make it tight). With D = diag(t) and G = W W^T (for convolutions the
    circular Gram operator that dominates the zero-padded one, see `aol_conv_bound`):

        ||dy||^2 <= ||dx||^2 - u^T (2 I - D^1/2 G D^1/2) u,   u = D^1/2 dv,

    by dv_i (dz_i - dv_i) >= 0 with weights t_i. Schur's test with weights q_i / sqrt(t_i) gives
    rho = max_i (t_i / q_i) sum_j |G_ij| q_j >= lambda_max(D^1/2 G D^1/2) (SLL's condition is
    rho <= 2); with eps = max(0, rho - 2) and ||u||^2 <= max(t) ||W||^2 ||dx||^2,

        Lipschitz <= sqrt(1 + eps max(t) ||W||^2),   ||W||^2 <= max_i sum_j |G_ij| (Gershgorin).

    sums: `sll_gram_sums(|G|, t, q)` when the caller already holds the float64 |G| of this very w
    (a fully connected block's reparameterisation computes it for t): the bound is then the same
    float64 arithmetic without a second W W^T, the cost of the whole check for 2048 x 2880 weights.
    """
    import torch.nn.functional as F

    w, t, q = _f64(w), _f64(t), _f64(q).abs()
    g: Tensor | None = None
    if conv:
        size = w.shape[-1]
        g = F.conv2d(w, w, padding=size - 1).abs().sum((2, 3))  # (inner, inner) summed |kkt|
        # sum over offsets of (|K| * |K|)[i, j] = sum_c S[i, c] S[j, c] with S = per-channel tap sums
        s_abs = w.abs().sum((2, 3))  # (inner, channels)
        terms = w.shape[1] * size * size
    else:
        if sums is None:
            g = (w @ w.T).abs()
        s_abs = w.abs()  # (inner, features): |W| |W|^T v computed as two products with a vector
        terms = w.shape[1]
    if not bool((t > 0).any()):
        return 1.0 * (1 + 4 * U)  # no active neuron: the identity
    if sums is None:
        assert g is not None
        sums = sll_gram_sums(g, t, q)
    g_q, g_1 = sums
    qa = _schur_weights(t, q)
    gk = gamma_k(terms)
    err_q = gk * (s_abs @ (s_abs.T @ qa))  # rounding of G's entries, weighted by q
    err_1 = gk * (s_abs @ (s_abs.T @ torch.ones_like(qa)))
    rho = schur_gram_bound(t * g_q, t * err_q, qa)
    norm_w2 = float((g_1 + err_1).max())
    eps = max(0.0, rho - 2.0)
    return math.sqrt(1.0 + eps * float(t.max()) * norm_w2) * (1 + 4 * U)


def sll_gram_sums(g: Tensor, t: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """(|G| qa, |G| 1) of `sll_bound`: the Gram's row sums weighted by the Schur weights qa and by 1.

    g: the float64 |W W^T| (inner, inner) of the served W; t, q as in `sll_bound`."""
    return g @ _schur_weights(_f64(t), _f64(q).abs()), g.sum(1)


def _schur_weights(t: Tensor, q: Tensor) -> Tensor:
    """Schur weights: q where t > 0 (a zero q beside a positive t is an inconsistent layer; the
    tiny weight then makes the bound huge rather than wrong); coordinates with t = 0 drop out."""
    return torch.where(t > 0, q.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(q))


def _f64(t: Tensor) -> Tensor:
    t = t.detach()
    if t.is_complex():
        return t.to(torch.complex128)
    return t.to(torch.float64)

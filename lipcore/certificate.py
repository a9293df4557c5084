"""Certificates from logits: certified radii of a classifier's predictions given a Lipschitz bound.

Only the logits, the bound and (for LLN models) the head's rows enter here; lipcore.certify computes
those from a model (its float64 copy, the verified bound, the rounding allowance) and calls
`certify`. The module doc of lipcore.certify says what is certified and in which units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

SQRT2 = math.sqrt(2.0)
PAPER_RADII = (36 / 255, 72 / 255, 108 / 255)


@dataclass(frozen=True)
class Certificate:
    """Per-input certificate; all tensors have shape (batch,)."""

    predicted: Tensor  # int64 top-1 class, -1 where the logits are not finite
    runner_up: Tensor  # int64 class that bounds the radius, -1 where undefined
    margin: Tensor  # float64 logit gap top-1 minus runner-up (NaN where not finite)
    radius: Tensor  # float64 certified l2 radius, model-input space


def _check(logits: Tensor, gamma: float | None) -> float:
    if gamma is None:
        raise ValueError("this model has no Lipschitz bound (Plain layers), so it cannot be certified")
    if math.isfinite(gamma) and gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")  # (NaN/inf: no certificate, see certify)
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise ValueError(f"certificates need (batch, outputs) logits, got shape {tuple(logits.shape)}")
    return float(gamma)


def certify(
    logits: Tensor,
    gamma: float | None,
    *,
    lln_weight: Tensor | None,
    threshold: float = 0.5,
    error: Tensor | None = None,
    error_slope: float = 0.0,
) -> Certificate:
    """Certified l2 radius (model-input space) of each prediction of a gamma-Lipschitz classifier.

    Prefer `certify_model(model, x)`, which takes the head and the bound from the model. Here
    logits: (batch, classes). gamma: an l2 Lipschitz bound of the network (for LLN models: of the
    map to the LLN head's input). lln_weight (keyword, required): the (classes, features) unit-norm
    rows of the model's LLN head, or None for a model without one; it must be given explicitly
    because the sqrt(2) gamma used without it is wrong for LLN models.
    A single output (batch, 1), such as the Toy regression, is certified as the decision
    f(x) > threshold: predicted 1 or 0, margin |f - threshold|, radius margin / gamma (one output
    moves by at most gamma * ||delta||; there is no pair of logits, hence no sqrt 2).

    Rounding: `error` (batch,) bounds ||computed logits - exact logits|| at each input and
    `error_slope` how fast that bound grows with the distance from it (`RoundingModel`); a pair's
    radius is then (gap - 2 sqrt2 error) / (L_ij + sqrt2 error_slope), 0 where the gap does not
    exceed the error (so identical LLN rows give 0, not infinity, once a slope is given). A
    non-finite or non-positive bound (a NaN `verified`) certifies nothing: radius 0 everywhere.
    """
    gamma = _check(logits, gamma)
    z = logits.detach().to(torch.float64)
    finite = torch.isfinite(z).all(dim=1)
    err = torch.zeros(len(z), dtype=torch.float64, device=z.device) if error is None else error.to(z)
    slope = float(error_slope)
    if not (math.isfinite(gamma) and math.isfinite(slope) and slope >= 0):
        finite = torch.zeros_like(finite)  # no usable bound: no certificate, predictions still given
        gamma, slope = 1.0, 0.0
    finite = finite & torch.isfinite(err)
    z = torch.where(torch.isfinite(z).all(dim=1)[:, None], z, torch.zeros_like(z))
    err = torch.where(finite, err, torch.zeros_like(err))
    if z.shape[1] == 1:
        return _certify_threshold(z[:, 0], finite, gamma, threshold, err, slope)
    return _certify_pairs(logits, z, finite, gamma, lln_weight, err, slope)


def _certify_pairs(
    logits: Tensor, z: Tensor, finite: Tensor, gamma: float, lln_weight: Tensor | None, err: Tensor, slope: float
) -> Certificate:
    """`certify` of (batch, classes >= 2) logits: z, the float64 logits with non-finite rows zeroed,
    `finite` (batch,) the rows that may be certified, err/slope the rounding allowance."""
    pred = z.argmax(dim=1)  # first maximal index on ties, on every device
    top = z.gather(1, pred[:, None])
    gaps = top - z  # (b, c) >= 0
    if lln_weight is None:
        pair_lip = torch.full_like(z, SQRT2 * gamma)
    else:
        w = lln_weight.detach().to(device=z.device, dtype=torch.float64)
        if w.shape[0] != z.shape[1]:
            raise ValueError(f"lln_weight has {w.shape[0]} rows for {z.shape[1]} classes")
        pair_lip = gamma * lln_distances(w)[pred]
    pair_lip = pair_lip + SQRT2 * slope
    gaps_left = gaps - 2 * SQRT2 * err[:, None]  # what rounding at x and at x + delta cannot eat
    # A pair whose gap cannot move (identical LLN rows, no rounding slope given) never flips:
    # infinite radius unless tied.
    ratio = torch.where(
        gaps_left > 0,
        torch.where(
            pair_lip > 0,
            gaps_left / pair_lip.clamp_min(torch.finfo(torch.float64).tiny),
            torch.full_like(gaps, math.inf),
        ),
        torch.zeros_like(gaps),
    )
    ratio.scatter_(1, pred[:, None], math.inf)  # the predicted class is not its own competitor
    radius, runner = ratio.min(dim=1)
    margin = gaps.gather(1, runner[:, None]).squeeze(1)
    radius = torch.where(finite, radius, torch.zeros_like(radius))
    shown = torch.isfinite(logits.detach()).all(dim=1).to(finite.device)
    margin = torch.where(shown, margin, torch.full_like(margin, math.nan))
    minus1 = torch.full_like(pred, -1)
    return Certificate(
        predicted=torch.where(shown, pred, minus1),
        runner_up=torch.where(shown, runner, minus1),
        margin=margin,
        radius=radius,
    )


def _certify_threshold(
    f: Tensor, finite: Tensor, gamma: float, threshold: float, err: Tensor, slope: float
) -> Certificate:
    shown = torch.isfinite(f)
    pred = (f > threshold).long()
    margin = (f - threshold).abs()
    left = margin - 2 * err
    radius = torch.where(finite & (left > 0), left / (gamma + slope), torch.zeros_like(margin))
    minus1 = torch.full_like(pred, -1)
    return Certificate(
        predicted=torch.where(shown, pred, minus1),
        runner_up=torch.where(shown, 1 - pred, minus1),
        margin=torch.where(shown, margin, torch.full_like(margin, math.nan)),
        radius=radius,
    )


def lln_distances(w: Tensor) -> Tensor:
    """(classes, classes) matrix of ||w_i - w_j||, from explicit differences.

    The Gram-matrix shortcut ||w_i||^2 + ||w_j||^2 - 2 w_i.w_j cancels badly for close rows and
    could *under*-estimate a distance, i.e. over-state a radius; row by row it is exact and cheap.
    """
    return torch.stack([(row - w).norm(dim=1) for row in w])


def certified_radius(logits: Tensor, gamma: float | None, *, lln_weight: Tensor | None) -> Tensor:
    """(batch,) float64 certified radii in model-input space; see `certify`."""
    return certify(logits, gamma, lln_weight=lln_weight).radius


def certified_correct(
    logits: Tensor,
    labels: Tensor,
    gamma: float | None,
    radii: Sequence[float] = PAPER_RADII,
    *,
    lln_weight: Tensor | None,
    std: Sequence[float] | None = None,
    error: Tensor | None = None,
    error_slope: float = 0.0,
) -> dict[float, int]:
    """Number of inputs classified correctly *and* certified at radius > eps, for each eps.

    Without `std` the radii eps are in model-input space; with the dataset's `std` they are in
    [0, 1] pixel space (each certified radius is converted with `pixel_radius` first). `error`,
    `error_slope`: the float64 forward's rounding bound (`forward_rounding`), as in `certify`.
    """
    cert = certify(logits, gamma, lln_weight=lln_weight, error=error, error_slope=error_slope)
    correct = cert.predicted == labels.to(cert.predicted.device)
    radius = pixel_radius(cert.radius, std)
    return {float(eps): int((correct & (radius > eps)).sum()) for eps in radii}


def certified_accuracy(
    logits: Tensor,
    labels: Tensor,
    gamma: float | None,
    radii: Sequence[float] = PAPER_RADII,
    *,
    lln_weight: Tensor | None,
    std: Sequence[float] | None = None,
) -> dict[float, float]:
    """Fraction (0..1) of inputs classified correctly with a certified radius > eps, per eps
    (model-input space, or pixel space when `std` is given; see `certified_correct`)."""
    counts = certified_correct(logits, labels, gamma, radii, lln_weight=lln_weight, std=std)
    n = max(len(labels), 1)
    return {eps: c / n for eps, c in counts.items()}


def pixel_radius(radius: Tensor | float, std: Sequence[float] | None) -> Tensor | float:
    """Convert a model-input-space radius to [0, 1] pixel space for inputs normalised by `std`.

    x_model = (x_pixel - mean) / std, so ||d_model|| <= ||d_pixel|| / min(std): a pixel
    perturbation smaller than radius * min(std) stays inside the certified model-input ball.
    """
    factor = 1.0 if not std else float(min(std))
    return radius * factor

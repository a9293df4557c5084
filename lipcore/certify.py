"""Certificates of gamma-Lipschitz classifiers and the empirical Lipschitz lower bound.

If every logit gap f_i - f_j is L_ij-Lipschitz (l2) in the model input, no perturbation with
||delta||_2 < min_j (f_i - f_j) / L_ij can change the prediction i. For a gamma-Lipschitz network
L_ij = sqrt(2) * gamma; with a last-layer normalisation (LLN) head of unit rows w, L_ij =
gamma * ||w_i - w_j|| where gamma bounds the map from input to the head's input.

All radii here are in **model-input space** (after the dataset normalisation). To express one in
[0, 1] pixel space multiply by min(std) of the normalisation (see `pixel_radius`).

Margins and radii are computed in float64 from the logits. Ties (top-1 == runner-up) give radius 0;
rows with NaN or infinite logits are not certifiable: predicted class -1, radius 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lipcore.precision import full_precision
from lipcore.runtime import flush_denormals

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
    if not (gamma > 0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma}")
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise ValueError(f"certificates need (batch, outputs) logits, got shape {tuple(logits.shape)}")
    return float(gamma)


def certify(
    logits: Tensor, gamma: float | None, lln_weight: Tensor | None = None, threshold: float = 0.5
) -> Certificate:
    """Certified l2 radius (model-input space) of each prediction of a gamma-Lipschitz classifier.

    logits: (batch, classes). gamma: the network's l2 Lipschitz bound (to the LLN head's input when
    `lln_weight` is given). lln_weight: (classes, features) unit-norm rows of an LLN head, or None.
    A single output (batch, 1), such as the Toy regression, is certified as the decision
    f(x) > threshold: predicted 1 or 0, margin |f - threshold|, radius margin / gamma (one output
    moves by at most gamma * ||delta||; there is no pair of logits, hence no sqrt 2).
    """
    gamma = _check(logits, gamma)
    z = logits.detach().to(torch.float64)
    finite = torch.isfinite(z).all(dim=1)
    z = torch.where(finite[:, None], z, torch.zeros_like(z))
    if z.shape[1] == 1:
        return _certify_threshold(z[:, 0], finite, gamma, threshold)
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
    # A pair whose gap cannot move (identical LLN rows) never flips: infinite radius unless tied.
    ratio = torch.where(
        pair_lip > 0, gaps / pair_lip.clamp_min(torch.finfo(torch.float64).tiny),
        torch.where(gaps > 0, torch.full_like(gaps, math.inf), torch.zeros_like(gaps)),
    )
    ratio.scatter_(1, pred[:, None], math.inf)  # the predicted class is not its own competitor
    radius, runner = ratio.min(dim=1)
    margin = gaps.gather(1, runner[:, None]).squeeze(1)
    radius = torch.where(finite, radius, torch.zeros_like(radius))
    margin = torch.where(finite, margin, torch.full_like(margin, math.nan))
    minus1 = torch.full_like(pred, -1)
    return Certificate(
        predicted=torch.where(finite, pred, minus1),
        runner_up=torch.where(finite, runner, minus1),
        margin=margin,
        radius=radius,
    )


def _certify_threshold(f: Tensor, finite: Tensor, gamma: float, threshold: float) -> Certificate:
    pred = (f > threshold).long()
    margin = (f - threshold).abs()
    minus1 = torch.full_like(pred, -1)
    return Certificate(
        predicted=torch.where(finite, pred, minus1),
        runner_up=torch.where(finite, 1 - pred, minus1),
        margin=torch.where(finite, margin, torch.full_like(margin, math.nan)),
        radius=torch.where(finite, margin / gamma, torch.zeros_like(margin)),
    )


def lln_distances(w: Tensor) -> Tensor:
    """(classes, classes) matrix of ||w_i - w_j||, from explicit differences.

    The Gram-matrix shortcut ||w_i||^2 + ||w_j||^2 - 2 w_i.w_j cancels badly for close rows and
    could *under*-estimate a distance, i.e. over-state a radius; row by row it is exact and cheap.
    """
    return torch.stack([(row - w).norm(dim=1) for row in w])


def certified_radius(logits: Tensor, gamma: float | None, lln_weight: Tensor | None = None) -> Tensor:
    """(batch,) float64 certified radii in model-input space; see `certify`."""
    return certify(logits, gamma, lln_weight).radius


def certified_correct(
    logits: Tensor, labels: Tensor, gamma: float | None, radii: Sequence[float] = PAPER_RADII,
    lln_weight: Tensor | None = None,
) -> dict[float, int]:
    """Number of inputs classified correctly *and* certified at radius > eps, for each eps."""
    cert = certify(logits, gamma, lln_weight)
    correct = cert.predicted == labels.to(cert.predicted.device)
    return {float(eps): int((correct & (cert.radius > eps)).sum()) for eps in radii}


def certified_accuracy(
    logits: Tensor, labels: Tensor, gamma: float | None, radii: Sequence[float] = PAPER_RADII,
    lln_weight: Tensor | None = None,
) -> dict[float, float]:
    """Fraction (0..1) of inputs classified correctly with a certified radius > eps, per eps."""
    counts = certified_correct(logits, labels, gamma, radii, lln_weight)
    n = max(len(labels), 1)
    return {eps: c / n for eps, c in counts.items()}


def model_certificate(model: nn.Module, x: Tensor) -> Certificate:
    """Run `model` on `x` in eval mode at full precision and certify its predictions."""
    gamma = getattr(model, "gamma", None)
    head = getattr(model, "lln_head", None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), full_precision():
            logits = model(x)
            w = head.normalized_weight() if head is not None else None
    finally:
        model.train(was_training)
    return certify(logits, gamma, w)


def pixel_radius(radius: Tensor | float, std: Sequence[float] | None) -> Tensor | float:
    """Convert a model-input-space radius to [0, 1] pixel space for inputs normalised by `std`.

    x_model = (x_pixel - mean) / std, so ||d_model|| <= ||d_pixel|| / min(std): a pixel
    perturbation smaller than radius * min(std) stays inside the certified model-input ball.
    """
    factor = 1.0 if not std else float(min(std))
    return radius * factor


def empirical_lipschitz(
    model: nn.Module, x: Tensor, *, eps: float = 0.05, restarts: int = 10, lr: float = 0.1,
    max_steps: int = 1000, generator: torch.Generator | None = None, max_batch: int = 1024,
) -> float:
    """Lower bound on the l2 Lipschitz constant of `model` near the points `x` (batch, ...).

    The paper's estimator: maximise ||f(x + d) - f(x)||^2 / ||d||^2 over both x and d with Adam
    (lr 0.1; after 5 steps at a learning rate, divided by 10 whenever a step gains less than
    1e-3; it ends at lr 1e-5 or after 50 steps at one rate; `max_steps` caps it), from `restarts`
    random starts d ~ U(-eps, eps). Restarts run side by side as one batch (up to `max_batch`
    rows at a time), which is what makes the estimate cheap for small models. Returns the largest
    sqrt(||f(x+d)-f(x)||^2 / (||d||^2 + 1e-6)) evaluated at any step: below every true difference
    quotient, and the 1e-6 keeps float32 rounding of tiny steps from inflating it. The model runs
    in eval mode at full precision; its parameters and their .grad are left untouched.
    """
    flush_denormals()
    was_training = model.training
    model.eval()
    best = 0.0
    per_group = max(1, min(restarts, max_batch // max(len(x), 1)))
    try:
        with full_precision():
            done = 0
            while done < restarts:
                group = min(per_group, restarts - done)
                best = max(best, _ascend(model, x.detach().repeat(group, *([1] * (x.dim() - 1))), eps, lr,
                                         max_steps, generator))
                done += group
    finally:
        model.train(was_training)
    return best


def _ascend(model: nn.Module, x: Tensor, eps: float, lr: float, max_steps: int,
            generator: torch.Generator | None) -> float:
    """One run of the estimator's gradient ascent on the rows of x; the best quotient seen."""
    sq = lambda t: t.flatten(1).pow(2).sum(1)  # noqa: E731
    x0 = x.clone().requires_grad_(True)
    noise = torch.empty(x0.shape, dtype=x0.dtype).uniform_(-eps, eps, generator=generator)
    d = noise.to(x0.device).requires_grad_(True)
    opt = torch.optim.Adam([x0, d], lr=lr)
    best, last, since = 0.0, 0.0, 0
    for _ in range(max_steps):
        if since >= 50:  # 50 steps at one learning rate: converged (as the paper)
            break
        dy = model(x0 + d) - model(x0)
        ratio = sq(dy) / (sq(d) + 1e-6)
        x0.grad, d.grad = torch.autograd.grad(-ratio.sum(), [x0, d])
        opt.step()
        current = float(ratio.detach().max())
        best = max(best, current)
        since += 1
        if since >= 5:
            if current < last + 1e-3:
                opt.param_groups[0]["lr"] /= 10.0
                since = 0
            if opt.param_groups[0]["lr"] <= 1e-5:
                break
        last = current
    return math.sqrt(best)

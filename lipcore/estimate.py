"""The empirical Lipschitz lower bound of the paper (gradient ascent on difference quotients)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lipcore.precision import full_precision
from lipcore.runtime import flush_denormals


def empirical_lipschitz(
    model: nn.Module,
    x: Tensor,
    *,
    eps: float = 0.05,
    restarts: int = 10,
    lr: float = 0.1,
    max_steps: int = 1000,
    generator: torch.Generator | None = None,
    max_batch: int = 1024,
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
                best = max(
                    best,
                    _ascend(model, x.detach().repeat(group, *([1] * (x.dim() - 1))), eps, lr, max_steps, generator),
                )
                done += group
    finally:
        model.train(was_training)
    return best


def _ascend(
    model: nn.Module, x: Tensor, eps: float, lr: float, max_steps: int, generator: torch.Generator | None
) -> float:
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

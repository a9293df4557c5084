"""l2 attacks in model-input space: a PGD check of certificates and a minimal-perturbation search.

Certificates are lower bounds on the distance to the nearest decision change; these attacks give
upper bounds, so a caller can report the bracket [certified, attacked]. Decisions follow
`lipcore.certify`: argmax (first index on ties) for >= 2 outputs, f > threshold for one output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lipcore.precision import full_precision


def decision(out: Tensor, threshold: float = 0.5) -> Tensor:
    """(batch, outputs) -> (batch,) int64 decisions, as certify() defines them."""
    return (out[:, 0] > threshold).long() if out.shape[1] == 1 else out.argmax(dim=1)


def decision_margin(out: Tensor, label: Tensor, threshold: float = 0.5) -> Tensor:
    """(batch,) margin of class `label`: > 0 keeps the decision, < 0 changes it."""
    if out.shape[1] == 1:
        sign = label.to(out.dtype) * 2 - 1
        return sign * (out[:, 0] - threshold)
    true = out.gather(1, label[:, None]).squeeze(1)
    other = out.scatter(1, label[:, None], -math.inf).amax(dim=1)
    return true - other


def _unit(g: Tensor) -> Tensor:
    norm = g.flatten(1).norm(dim=1).clamp_min(1e-30)
    return g / norm.view(-1, *([1] * (g.dim() - 1)))


def _project(delta: Tensor, radius: Tensor) -> Tensor:
    norm = delta.flatten(1).norm(dim=1)
    factor = torch.where(norm > radius, radius / norm.clamp_min(1e-30), torch.ones_like(norm))
    return delta * factor.view(-1, *([1] * (delta.dim() - 1)))


def pgd_l2(
    model: nn.Module,
    x: Tensor,
    label: Tensor,
    radius: Tensor | float,
    *,
    steps: int = 100,
    restarts: int = 1,
    threshold: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient descent on the decision margin inside l2 balls of `radius` around x.

    x: (batch, ...) model inputs; label: (batch,) the decision to defeat; radius: scalar or (batch,)
    in model-input space. Returns the perturbed inputs with the lowest margin found (batch, ...).
    """
    model.eval()
    r = torch.as_tensor(radius, dtype=x.dtype, device=x.device).expand(x.shape[0])
    best = x.detach().clone()
    best_margin = torch.full((x.shape[0],), math.inf, dtype=torch.float64, device=x.device)
    with full_precision():
        for _ in range(restarts):
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            delta = _project(_unit(noise) * r.view(-1, *([1] * (x.dim() - 1))) * 0.5, r)
            for i in range(steps):
                delta.requires_grad_(True)
                m = decision_margin(model(x + delta), label, threshold)
                (g,) = torch.autograd.grad(m.sum(), delta)
                with torch.no_grad():
                    m64 = m.detach().double()
                    better = m64 < best_margin
                    best_margin = torch.where(better, m64, best_margin)
                    best[better] = (x + delta)[better].detach()
                    # step size decays from r/4 to r/100 (cosine) so late steps refine
                    size = r * (0.01 + 0.24 * (1 + math.cos(math.pi * i / steps)) / 2)
                    delta = _project(delta - _unit(g) * size.view(-1, *([1] * (x.dim() - 1))), r)
            with torch.no_grad():
                m64 = decision_margin(model(x + delta), label, threshold).double()
                better = m64 < best_margin
                best_margin = torch.where(better, m64, best_margin)
                best[better] = (x + delta)[better]
    return best


@dataclass(frozen=True)
class Adversarial:
    """The smallest decision-changing perturbations found, per input (model-input space)."""

    radius: Tensor  # (batch,) float64 ||delta||_2; inf where no adversarial example was found
    delta: Tensor  # (batch, ...) the perturbation itself (zeros where none was found)
    steps_run: int = 0  # steps taken; fewer than asked when `should_stop` cut the search short

    def pixel_radius(self, std: Sequence[float] | None) -> Tensor:
        """||delta * std||_2 per input: the same perturbation measured in [0, 1] pixel space
        (x_model = (x_pixel - mean) / std, so a pixel step is the model step times std)."""
        if not std:
            return self.radius
        view = (1, -1) + (1,) * (self.delta.dim() - 2)
        scaled = self.delta * torch.tensor(std, dtype=self.delta.dtype, device=self.delta.device).view(view)
        norm = scaled.flatten(1).norm(dim=1).double()
        return torch.where(torch.isfinite(self.radius), norm, self.radius)


def minimal_adversarial_l2(
    model: nn.Module,
    x: Tensor,
    *,
    steps: int = 200,
    init_radius: float = 1.0,
    threshold: float = 0.5,
    max_radius: float = 1e3,
    should_stop: Callable[[], bool] | None = None,
) -> Adversarial:
    """Smallest l2 perturbation found that changes each decision, in model-input space.

    Decoupled direction and norm (Rony et al., 2019): descend the decision margin on a sphere of
    radius eps, shrinking eps by 5% while the point is adversarial and growing it by 5% otherwise.
    Every returned radius belongs to a verified adversarial example (its `delta`); inf where none
    was found. `should_stop()` is asked after every step; when it says True the search ends there
    (its radii are still verified adversarial examples, just possibly larger) and `steps_run` says so.
    """
    model.eval()
    shape = (-1, *([1] * (x.dim() - 1)))
    with torch.no_grad(), full_precision():
        label = decision(model(x), threshold)
    eps = torch.full((x.shape[0],), float(init_radius), dtype=x.dtype, device=x.device)
    delta = torch.zeros_like(x)
    best = torch.full((x.shape[0],), math.inf, dtype=torch.float64, device=x.device)
    best_delta = torch.zeros_like(x)

    def record(out: Tensor, d: Tensor) -> None:
        nonlocal best
        adv = decision(out, threshold) != label
        norm = d.flatten(1).norm(dim=1).double()
        better = adv & (norm < best)
        best = torch.where(better, norm, best)
        best_delta[better] = d[better]

    with full_precision():
        steps_run = 0
        for i in range(steps):
            if steps_run and should_stop is not None and should_stop():
                break
            steps_run += 1
            delta.requires_grad_(True)
            out = model(x + delta)
            m = decision_margin(out, label, threshold)
            (g,) = torch.autograd.grad(m.sum(), delta)
            with torch.no_grad():
                record(out.detach(), delta.detach())
                adv = decision(out.detach(), threshold) != label
                eps = torch.where(adv, eps * 0.95, (eps * 1.05).clamp(max=max_radius))
                size = eps * (0.01 + 0.99 * (1 + math.cos(math.pi * i / steps)) / 2)
                delta = delta - _unit(g) * size.view(shape)
                delta = _unit(delta) * eps.view(shape) if i < steps - 1 else _project(delta, eps)
        with torch.no_grad():
            record(model(x + delta), delta)  # the final point was never evaluated in the loop
    return Adversarial(best, best_delta, steps_run)

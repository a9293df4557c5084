"""Certified radii of a trained model for a batch of inputs (torch): run in the certify processes
(api.certify_pool) and, for `?attack=true`, on the API's attack threads (api.routers.models).

Radii are computed in model-input space (after the dataset normalisation) by lipcore.certify, from
the float64 copy of the model with the bound max(gamma, verified) and the forward's rounding bound,
and for image models also reported in [0,1] pixel space: (radius - normalisation rounding) * min(std)
is a pixel-space ball that normalisation maps inside the certified one. Vector models (the Toy) take
their inputs as given, unnormalised: their radius_pixel is the radius. The optional attack gives the other side of the bracket: the smallest
adversarial perturbation found (model-input space), an upper bound on the true distance.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from fastapi import HTTPException

from api.schemas import AttackReport, CertifiedInput, LipschitzBound


def input_shape(spec: Any) -> tuple[int, ...]:
    """(C, H, W) for image models, (features,) for the 1-D Toy regression."""
    if spec.img_size:
        return (spec.in_channels, spec.img_size, spec.img_size)
    return (spec.in_channels or 1,)


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


class TenantSlots:
    """Work in progress per tenant and in all: `hold(tenant)` answers 429 with Retry-After when
    either limit is reached, instead of queueing work that would then outlive its clients.
    Subclasses name the work and its settings (the messages' templates)."""

    tenant_full = "{n} of your tenant's requests are in progress"
    all_full = "{n} requests are in progress on this server"
    what, hint = "request", "retry later"

    def __init__(self, per_tenant: int, total: int, retry_after_s: float = 1.0) -> None:
        self.per_tenant, self.total, self.retry_after_s = per_tenant, total, retry_after_s
        self._lock = threading.Lock()
        self._by_tenant: Counter[str] = Counter()

    @property
    def active(self) -> int:
        return sum(self._by_tenant.values())

    @contextmanager
    def hold(self, tenant: str) -> Iterator[None]:
        with self._lock:
            if self._by_tenant[tenant] >= self.per_tenant:
                limit: str | None = self.tenant_full.format(n=self.per_tenant)
            elif self.active >= self.total:
                limit = self.all_full.format(n=self.total)
            else:
                limit = None
                self._by_tenant[tenant] += 1
        if limit is not None:
            raise HTTPException(
                429,
                f"{self.what}: {limit}; {self.hint}",
                headers={"Retry-After": str(max(1, math.ceil(self.retry_after_s)))},
            )
        try:
            yield
        finally:
            with self._lock:
                self._by_tenant[tenant] -= 1
                if self._by_tenant[tenant] <= 0:
                    del self._by_tenant[tenant]


class AttackSlots(TenantSlots):
    """Concurrent ?attack=true searches, per tenant and in all (a CPU-heavy search each)."""

    tenant_full = "LBDN_CERTIFY_ATTACKS_PER_TENANT ({n}) attacks of your tenant are running"
    all_full = "LBDN_CERTIFY_ATTACKS_TOTAL ({n}) attacks are running on this server"
    what, hint = "attack", "retry later, or certify without ?attack=true"


class AttackBudget:
    """`should_stop()` for lipcore's attack: past `timeout_s`, or once `disconnected()` says so
    (asked at most every `check_every_s`, since asking crosses into the event loop)."""

    def __init__(self, timeout_s: float, disconnected: Callable[[], bool] | None, check_every_s: float = 0.25):
        self.deadline = time.monotonic() + timeout_s
        self.disconnected, self.check_every_s = disconnected, check_every_s
        self._next_check = 0.0
        self.reason: str | None = None

    def __call__(self) -> bool:
        now = time.monotonic()
        if now >= self.deadline:
            self.reason = "time budget"
        elif self.disconnected is not None and now >= self._next_check:
            self._next_check = now + self.check_every_s
            if self.disconnected():
                self.reason = "client disconnected"
        return self.reason is not None


def certify_batch(
    loaded: Any,
    x: np.ndarray,
    *,
    scale: str,
    attack: bool,
    attack_steps: int,
    budget: AttackBudget | None = None,
) -> tuple[LipschitzBound, list[CertifiedInput], AttackReport | None]:
    """Certificates of `x` (n, *input_shape) given in `scale` ('pixel' in [0,1], or 'model').

    422 if the model's outputs are not finite for some input (inputs too large for float32); the
    attack, if asked for, runs under `budget` and reports whether it was cut short."""
    from lipcore.attack import minimal_adversarial_l2
    from lipcore.certify import certify_model

    model = loaded.model
    pixels = bool(loaded.spec.img_size)  # only image models take normalised pixels; vector inputs are used as given
    xt = _model_input(loaded, x, scale == "pixel" and pixels)
    # float64 copy of the model (cached per loaded model), bound max(gamma, verified), rounding off
    cert, logits, bounds = certify_model(model, xt)
    finite = logits.isfinite().all(dim=1)
    if not bool(finite.all()):  # a certificate needs finite logits; never answer with nulls
        first = int((~finite).nonzero()[0, 0])
        raise HTTPException(422, f"input {first}: the model's outputs overflow for this input; send smaller values")
    lln = getattr(model, "lln_head", None) is not None
    kind = "gamma (single output)" if logits.shape[1] == 1 else ("lln" if lln else "sqrt2*gamma")
    x_attack = xt.to(next(model.parameters()).dtype)
    adversarial = minimal_adversarial_l2(model, x_attack, steps=attack_steps, should_stop=budget) if attack else None
    results = _results(loaded, cert, logits, _pixel_radii(xt, cert.radius, pixels and scale == "pixel"))
    report = None
    if adversarial is not None:
        _add_attack(results, adversarial, loaded.std if pixels else None)
        cut = adversarial.steps_run < attack_steps
        report = AttackReport(
            steps=attack_steps,
            steps_run=adversarial.steps_run,
            cut_short=cut,
            reason=(budget.reason if budget is not None else None) if cut else None,
        )
    bound = LipschitzBound(gamma=bounds.gamma, verified=_finite(bounds.verified), used=_finite(bounds.used), kind=kind)
    return bound, results, report


def _model_input(loaded: Any, x: np.ndarray, normalise: bool) -> Any:
    """`x` as a float64 tensor of model inputs: normalised by the model's mean and std when given
    in pixels, in float64 so that the certificate is for exactly the pixel input given."""
    import torch

    xt = torch.from_numpy(np.asarray(x, dtype=np.float64))
    if normalise:
        view = (1, -1) + (1,) * (xt.dim() - 2)
        mean = torch.tensor(loaded.mean, dtype=xt.dtype).view(view)
        std = torch.tensor(loaded.std, dtype=xt.dtype).view(view)
        xt = (xt - mean) / std
    return xt


def _pixel_radii(xt: Any, radius: Any, from_pixels: bool) -> Any:
    """The model-space radii that a pixel-space ball may use (`radius` as is for model inputs).

    A pixel ball maps into the model-space ball about the *exact* normalisation of the pixel input;
    the float64 normalisation of x and of x + delta are each off by <= 2.01 u ||x_model|| (one
    subtraction, one division), so that slack comes off the radius before the conversion."""
    if not from_pixels:
        return radius
    u = 2.0**-53
    slack = 2.01 * u * (2 * xt.flatten(1).norm(dim=1) + radius) * (1 + 4 * u)
    return (radius - slack).clamp_min(0.0)


def _results(loaded: Any, cert: Any, logits: Any, pixel_radii: Any) -> list[CertifiedInput]:
    """One CertifiedInput per row of the certificate (radius_pixel in [0,1] units for image models)."""
    from lipcore.certify import pixel_radius

    pixels = bool(loaded.spec.img_size)
    results = []
    for i in range(len(cert.radius)):
        pred, radius = int(cert.predicted[i]), float(cert.radius[i])
        results.append(
            CertifiedInput(
                index=i,
                predicted=pred,
                class_name=loaded.classes[pred] if 0 <= pred < len(loaded.classes) else None,
                logits=logits[i].double().tolist(),
                margin=_finite(float(cert.margin[i])),
                radius=radius,
                radius_pixel=float(pixel_radius(float(pixel_radii[i]), loaded.std)) if pixels else radius,
            )
        )
    return results


def _add_attack(results: list[CertifiedInput], adversarial: Any, std: Any) -> None:
    """The same adversarial perturbation of each input measured in both spaces (pixel step =
    model step * std; `std` None for vector models, whose two spaces are one)."""
    attacked, attacked_pixel = adversarial.radius.tolist(), adversarial.pixel_radius(std).tolist()
    for item in results:
        item.attack_radius = _finite(attacked[item.index])
        item.attack_radius_pixel = _finite(attacked_pixel[item.index])

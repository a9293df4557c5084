"""Certified radii of a trained model for a batch of inputs (torch; runs in the threadpool).

Radii are computed in model-input space (after the dataset normalisation) by lipcore.certify and
also reported in [0,1] pixel space: radius * min(std) is a pixel-space ball that normalisation maps
inside the certified one. The optional attack gives the other side of the bracket: the smallest
adversarial perturbation found (model-input space), an upper bound on the true distance.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from api.schemas import CertifiedInput, LipschitzBound


def input_shape(spec: Any) -> tuple[int, ...]:
    """(C, H, W) for image models, (features,) for the 1-D Toy regression."""
    if spec.img_size:
        return (spec.in_channels, spec.img_size, spec.img_size)
    return (spec.in_channels or 1,)


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def certify_batch(
    loaded: Any,
    x: np.ndarray,
    *,
    scale: str,
    attack: bool,
    attack_steps: int,
) -> tuple[LipschitzBound, list[CertifiedInput]]:
    """Certificates of `x` (n, *input_shape) given in `scale` ('pixel' in [0,1], or 'model')."""
    import torch

    from lipcore.attack import minimal_adversarial_l2
    from lipcore.certify import certify, pixel_radius
    from lipcore.precision import full_precision

    model, spec = loaded.model, loaded.spec
    xt = torch.from_numpy(x)
    if scale == "pixel" and spec.img_size:
        view = (1, -1) + (1,) * (xt.dim() - 2)
        mean = torch.tensor(loaded.mean, dtype=xt.dtype).view(view)
        std = torch.tensor(loaded.std, dtype=xt.dtype).view(view)
        xt = (xt - mean) / std
    head = getattr(model, "lln_head", None)
    with torch.no_grad(), full_precision():
        logits = model(xt)
        weight = head.normalized_weight() if head is not None else None
    cert = certify(logits, model.gamma, weight)
    kind = "gamma (single output)" if logits.shape[1] == 1 else ("lln" if weight is not None else "sqrt2*gamma")
    adversarial = minimal_adversarial_l2(model, xt, steps=attack_steps) if attack else None
    if adversarial is not None:
        attacked = adversarial.radius.tolist()
        attacked_pixel = adversarial.pixel_radius(loaded.std if spec.img_size else None).tolist()
    results = []
    for i in range(len(x)):
        pred = int(cert.predicted[i])
        radius = float(cert.radius[i])
        margin = float(cert.margin[i])
        item = CertifiedInput(
            index=i,
            predicted=pred,
            class_name=loaded.classes[pred] if 0 <= pred < len(loaded.classes) else None,
            logits=logits[i].double().tolist(),
            margin=_finite(margin),
            radius=radius,
            radius_pixel=float(pixel_radius(radius, loaded.std)),
        )
        if adversarial is not None:
            # the same adversarial perturbation measured in both spaces (pixel step = model step * std)
            item.attack_radius = _finite(attacked[i])
            item.attack_radius_pixel = _finite(attacked_pixel[i])
        results.append(item)
    return LipschitzBound(gamma=float(model.gamma), kind=kind), results

"""Certificates of Lipschitz-bounded classifiers, the verified float64 bound, and the empirical
Lipschitz lower bound.

What is certified. If every logit gap f_i - f_j is L_ij-Lipschitz (l2) in the model input, no
perturbation with ||delta||_2 < min_j (f_i - f_j) / L_ij can change the prediction i. With a
bound L on the whole network L_ij = sqrt(2) L; with a last-layer normalisation (LLN) head of unit
rows w, L_ij = L ||w_i - w_j|| where L bounds the map from the input to the head's *input* (for LLN
models gamma does not bound the logits: the head adds up to ||W||_2).

Which bound. L = max(gamma, verified): gamma is the bound the network is built to have;
`verified_bound(model)` re-derives a bound layer by layer in float64 from the exact weights the
certificate uses. Certification (`certify_model`, `model_certificate`, training-time certified
accuracy, --mode eval, the API) runs the network itself in float64: a float64 copy of the model
whose reparameterisations (Cayley transforms, rescalings) are computed in float64, so float32
rounding of the factors (||W||_2 up to 1 + 2e-3 for large alphas) never enters a certificate.
The float64 forward's own rounding is bounded a priori (`rounding_model`, rules in
lipcore.layers.rounding) and taken off every margin, so near-ties get radius 0; a NaN or infinite
bound certifies nothing (radius 0, never gamma in its place).

All radii here are in **model-input space** (after the dataset normalisation). To express one in
[0, 1] pixel space multiply by min(std) of the normalisation (see `pixel_radius`).

Margins and radii are computed in float64 from the logits. Ties (top-1 == runner-up) give radius 0;
rows with NaN or infinite logits are not certifiable: predicted class -1, radius 0. For LLN models
the bound includes the head's |scale| (Resnet: sqrt(gamma)), the factor in front of its rows.
"""

from __future__ import annotations

import copy
import math
import threading
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# the arithmetic from logits lives in lipcore.certificate; its names stay importable from here
from lipcore.certificate import (
    PAPER_RADII,
    SQRT2,
    Certificate,
    certified_accuracy,
    certified_correct,
    certified_radius,
    certify,
    lln_distances,
    pixel_radius,
)
from lipcore.estimate import empirical_lipschitz
from lipcore.layers.reparam import VersionStamp, check_caches_by_version
from lipcore.layers.rounding import RoundingModel, rounding_model
from lipcore.models.base import body_of
from lipcore.precision import full_precision

# ---- float64 certification and the verified bound ---------------------------------------------

_F64_LOCK = threading.Lock()
_F64: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()
_BY_VERSION: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # see check_source_by_version


def float64_model(model: nn.Module) -> nn.Module:
    """A float64 eval-mode copy of `model`, cached per model while its parameters are unchanged.

    Its reparameterisations run in float64, so the effective weights a certificate uses are the
    float64 ones (the float32 model's factors are not orthogonal to better than ~1e-6..1e-3).
    The cache is checked by exact comparison with the model's parameters and buffers, and with
    every plain attribute of every submodule (`scale`, `gamma`, strides: whatever a forward
    reads), on every call, so a model trained or edited further gets a fresh copy (a model under
    `check_source_by_version` is checked by version counters instead of values). Thread-safe
    (the API certifies from several threads).
    """
    live = list(model.parameters()) + list(model.buffers())
    by_version = model in _BY_VERSION
    tensors = [] if by_version else [t.detach() for t in live]
    key = _attributes(model)
    with _F64_LOCK:
        entry = _F64.get(model)
        if entry is not None and entry["key"] == key and _unchanged(entry, live, tensors, by_version):
            return entry["model"]
        copy64 = copy.deepcopy(model).to(torch.float64).eval()
        for p in copy64.parameters():
            p.grad = None  # deepcopy carries a training model's gradients; the copy needs none
            p.requires_grad_(False)
        # The copy is private and written only through versioned paths (never param.data), so its
        # eval caches may be checked by version counter instead of by value (a third of a KWL
        # 1-image certificate's time).
        check_caches_by_version(copy64)
        _F64[model] = {
            "source": [t.clone() for t in tensors],  # (empty when checked by version)
            "stamp": VersionStamp(live) if by_version else None,
            "key": key,
            "model": copy64,
            "verified": None,
            "rounding": {},
        }
        return copy64


def check_source_by_version(model: nn.Module) -> None:
    """Have `float64_model(model)` check `model` by parameter identity, storage pointer and autograd
    version counter instead of comparing every value with a copy (and keep no copy): for a model its
    owner writes only through versioned paths, never `param.data` or numpy views, as
    lipcore.layers.check_caches_by_version. A certify process's loaded models are such: nothing
    writes them, and the value comparison was half of a 1-image KWL certificate's time (8 of 15 ms)."""
    with _F64_LOCK:
        if model not in _BY_VERSION:
            _BY_VERSION.add(model)
            _F64.pop(model, None)  # its entry kept a copy to compare with, not stamps


def _unchanged(entry: dict, live: list[Tensor], tensors: list[Tensor], by_version: bool) -> bool:
    if by_version:
        return entry["stamp"] is not None and entry["stamp"].matches(live)
    return entry["stamp"] is None and _same(entry["source"], tensors)


def _attributes(model: nn.Module) -> list[tuple[str, str]]:
    """repr of every non-tensor, non-module attribute of every submodule (except `training`)."""
    out = []
    for name, m in model.named_modules():
        plain = {
            k: v
            for k, v in vars(m).items()
            if k != "training" and not k.startswith("_") and isinstance(v, (int, float, bool, str, tuple, type(None)))
        }
        out.append((name, repr(sorted(plain.items()))))
    return out


def release_float64_model(model: nn.Module) -> None:
    """Drop the cached float64 copy of `model` (training does so after each test pass, so the copy
    and its snapshot do not hold device memory while the model trains on)."""
    with _F64_LOCK:
        _F64.pop(model, None)


def _same(saved: list[Tensor], now: list[Tensor]) -> bool:
    return len(saved) == len(now) and all(
        a.dtype == b.dtype and a.device == b.device and a.shape == b.shape and torch.equal(a, b)
        for a, b in zip(saved, now)
    )


def _module_bound(module: nn.Module) -> float:
    """Verified bound of one module of a network's body (float64)."""
    own = getattr(module, "lipschitz_bound", None)
    if callable(own):
        return float(own())
    if isinstance(module, (nn.Flatten, nn.Identity, nn.ReLU, nn.Dropout)):
        return 1.0  # isometries / 1-Lipschitz elementwise maps (Dropout: eval mode only)
    if isinstance(module, nn.Sequential):
        bound = 1.0
        for m in module:
            bound *= _module_bound(m)
        return bound
    if isinstance(module, nn.AvgPool2d):
        k = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
        stride = module.stride if isinstance(module.stride, int) else module.stride[0]
        if stride == k and module.padding in (0, (0, 0)) and module.kernel_size in (k, (k, k)):
            # non-overlapping k x k windows: ||sum of k^2 entries|| <= k ||entries||, then / divisor
            divisor = module.divisor_override or k * k
            return k / divisor
    raise TypeError(f"no verified Lipschitz bound for {type(module).__name__}; add a lipschitz_bound() method to it")


def verified_bound(model: nn.Module) -> float:
    """Upper bound on the l2 Lipschitz constant of `model`, verified in float64 from its weights.

    The bound is the product of per-layer bounds (`lipschitz_bound()` of each layer, see
    lipcore.layers.bounds) computed from the float64 effective weights that `certify_model` runs,
    so it is a bound for exactly the network that produces the certified logits. For an LLN model
    it bounds the map from the input to the LLN head's input *times the head's |scale|* (Resnet's
    head carries sqrt(gamma)), the factor that multiplies the head's row distances, as gamma does
    (the head enters the certificate through its row distances). Sandwich layers are checked
    through their defining inequality: the measured orthogonality residual eps of [A B] enters as
    sqrt(1 + 4 eps ||B||^2), with lambda_max bounded by Gershgorin's row sums; SLL and AOL layers
    through Schur's test on their Gram sums; orthogonal and linear layers through an upper bound on
    the spectral norm (Gershgorin on the Gram matrix, or its largest eigenvalue from eigvalsh plus
    a backward-error slack; per frequency for circular convolutions). Each product carries float64
    rounding allowances (~1e-13 relative). A model whose layers are all 1-Lipschitz by
    construction gets verified ~ gamma * (1 + 1e-13); a value far above gamma exposes a layer
    whose construction failed; NaN (a layer whose weights overflow) certifies nothing. Raises
    ValueError for models without a bound (Plain layers).
    """
    if getattr(model, "gamma", 0.0) is None:
        raise ValueError("this model has no Lipschitz bound (Plain layers), so it cannot be certified")
    return _verified(model, float64_model(model))


def _verified(model: nn.Module, m64: nn.Module) -> float:
    """verified_bound of `model` whose float64 copy `m64` was just checked (cached with it)."""
    entry = _F64.get(model)
    if entry is not None and entry["model"] is m64 and entry["verified"] is not None:
        return entry["verified"]
    with torch.no_grad(), full_precision():
        bounds = [_module_bound(m) for m in _certified_modules(m64)]
        bound = math.prod(bounds) * (1 + 4 * len(bounds) * 2.0**-53)
        head = getattr(m64, "lln_head", None)
        if head is not None:
            bound *= abs(head.scale)
    if entry is not None and entry["model"] is m64:
        entry["verified"] = bound
    return bound


def _certified_modules(m64: nn.Module) -> list[nn.Module]:
    """The modules whose bounds multiply into `verified_bound` (an LLN head is left out)."""
    modules = list(body_of(m64)) if hasattr(m64, "body") else [m64]
    if getattr(m64, "lln_head", None) is not None:
        modules = modules[:-1]
    return modules


def forward_rounding(model: nn.Module, x: Tensor) -> RoundingModel:
    """The RoundingModel of `model`'s float64 forward (`float64_model`) for inputs shaped like x
    (cached with the float64 copy). TypeError for a module without a rounding rule."""
    return _rounding(model, float64_model(model), x)


def _rounding(model: nn.Module, m64: nn.Module, x: Tensor) -> RoundingModel:
    """forward_rounding of `model` whose float64 copy `m64` was just checked (cached with it)."""
    shape = tuple(x.shape[1:])
    entry = _F64.get(model)
    cache = entry["rounding"] if entry is not None and entry["model"] is m64 else {}
    if shape not in cache:
        modules = list(body_of(m64)) if hasattr(m64, "body") else [m64]
        with torch.no_grad(), full_precision():
            bounds = [_module_bound(m) for m in modules]
            x0 = torch.zeros((1, *shape), dtype=torch.float64, device=x.device)
            cache[shape] = rounding_model(modules, bounds, x0, 2.0**-53)
    return cache[shape]


@dataclass(frozen=True)
class BoundReport:
    """The Lipschitz bounds behind a certificate (for LLN models: of the map to the head's input)."""

    gamma: float  # the bound the network is built to have
    verified: float  # verified_bound(model), float64, from the served weights

    @property
    def used(self) -> float:
        """The bound the radius uses: max(gamma, verified); NaN (no certificate) when either is not
        a finite positive number (Python's max(gamma, nan) would silently be gamma)."""
        if not all(math.isfinite(v) and v > 0 for v in (self.gamma, self.verified)):
            return math.nan
        return max(self.gamma, self.verified)

    def as_dict(self) -> dict[str, float]:
        return {"gamma": self.gamma, "verified": self.verified}


def bound_report(model: nn.Module) -> BoundReport:
    """gamma and verified bound of a certifiable model (ValueError for Plain models)."""
    gamma = getattr(model, "gamma", None)
    if gamma is None:
        raise ValueError("this model has no Lipschitz bound (Plain layers), so it cannot be certified")
    return BoundReport(float(gamma), verified_bound(model))


def certify_model(model: nn.Module, x: Tensor, batch_size: int = 1024) -> tuple[Certificate, Tensor, BoundReport]:
    """Certify `model`'s predictions on `x` (batch, ...) given in model-input space.

    Runs the float64 copy of the model (eval mode, full precision) and certifies its float64
    logits with the bound max(gamma, verified) and, for LLN models, the head's float64 rows.
    The float64 forward's rounding error (`rounding_model`) is taken off each margin and added
    to each pair's Lipschitz constant (see `certify`), so near-ties get radius 0.
    Returns (certificate, logits (batch, classes) float64, bounds); radii in model-input space.
    """
    gamma = getattr(model, "gamma", None)
    if gamma is None:
        raise ValueError("this model has no Lipschitz bound (Plain layers), so it cannot be certified")
    m64 = float64_model(model)  # the source's parameters compared once per call, not three times
    report = BoundReport(float(gamma), _verified(model, m64))
    head = getattr(m64, "lln_head", None)
    with torch.no_grad(), full_precision():
        x64 = x.detach().to(torch.float64)
        logits = torch.cat([m64(xb) for xb in x64.split(batch_size)]) if len(x64) else m64(x64)
        w = head.normalized_weight() if head is not None else None
        used = report.used
        try:
            rnd = _rounding(model, m64, x64)
        except (TypeError, ValueError):
            used = math.nan  # a module without a rounding rule: no certificate
            rnd = RoundingModel(2.0**-53, 0.0, 0.0)
        # (an LLN pair's constant is used * ||w_i - w_j||: `used` holds the head's |scale|)
        cert = certify(logits, used, lln_weight=w, error=rnd.error(x64), error_slope=rnd.e1)
    return cert, logits, report


def model_certificate(model: nn.Module, x: Tensor) -> Certificate:
    """Certificates of `model` on `x` (model-input space); see `certify_model`."""
    return certify_model(model, x)[0]


__all__ = [
    "PAPER_RADII",
    "SQRT2",
    "BoundReport",
    "Certificate",
    "RoundingModel",
    "bound_report",
    "certified_accuracy",
    "certified_correct",
    "certified_radius",
    "certify",
    "certify_model",
    "check_source_by_version",
    "empirical_lipschitz",
    "float64_model",
    "forward_rounding",
    "lln_distances",
    "model_certificate",
    "pixel_radius",
    "release_float64_model",
    "rounding_model",
    "verified_bound",
]

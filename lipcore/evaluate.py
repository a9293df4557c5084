"""Evaluation of trained models: AutoAttack robustness beside certificates, and the Toy study.

`evaluate_robustness` attacks in [0, 1] pixel space exactly as the paper (the model is wrapped with
its normalisation), with l2 AutoAttack at eps/255, and reports clean, certified and attacked
accuracy on the same inputs. Certified accuracy here is in pixel space too (radius * min(std)), so
the three numbers are comparable, and every certified input is checked against the attack: a
"certificate violation" would mean a wrong bound and is reported (it must be 0).

`evaluate_toy` is Table 1's study of the 1-D Toy network: per-layer empirical Lipschitz constants
and weight spectral norms, and the whole model's empirical Lipschitz bound over gamma.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lipcore.batch_results import batch_file, load_batch, save_batch
from lipcore.certify import certify_model, empirical_lipschitz, pixel_radius
from lipcore.checkpoint import LoadedModel, load_model
from lipcore.layers.reparam import check_caches_by_version
from lipcore.models.base import body_of
from lipcore.precision import full_precision
from lipcore.progress import Progress
from lipcore.runtime import flush_denormals, resolve_device, seed_everything

PAPER_EPS = (36, 72, 108)  # in 1/255 units


class Normalized(nn.Module):
    """model(normalise(x)) for x in [0, 1] pixel space: what AutoAttack must see."""

    mean: Tensor
    std: Tensor

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        p = next(model.parameters())
        self.register_buffer("mean", torch.tensor(mean, dtype=p.dtype, device=p.device).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=p.dtype, device=p.device).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


def attacks_for(version: str, num_classes: int, attacks: Sequence[str] | None = None) -> tuple[str, list[str] | None]:
    """The AutoAttack version and attack list to run.

    AutoAttack's targeted stages need 10 classes; below that `standard` runs its untargeted
    attacks only (APGD-CE and Square). `custom` needs an explicit list of attacks.
    """
    if version == "custom":
        if not attacks:
            raise ValueError("attack version 'custom' needs a list of attacks, e.g. ['apgd-ce', 'square']")
        return version, list(attacks)
    if version == "standard" and num_classes < 10:
        return "custom", ["apgd-ce", "square"]
    return version, None


def evaluate_robustness(
    model_path: str | Path | LoadedModel,
    *,
    data_dir: str | Path | None = None,
    eps: Sequence[float] = PAPER_EPS,
    version: str = "standard",
    n_examples: int | None = 1000,
    device: str | torch.device = "auto",
    seed: int = 0,
    batch_size: int = 256,
    attacks: Sequence[str] | None = None,
    on_log: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    state_dir: str | Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> dict[str, Any]:
    """l2 AutoAttack at each eps (in 1/255 units, pixel space) on the first `n_examples` test inputs.

    Returns {"n", "clean_acc", "certified_acc": {eps: %}, "autoattack_acc": {eps: %},
    "certificate_violations": {eps: count}, "eps", "version", "attacks", "units", "seconds",
    "lipschitz_bound": {"gamma", "verified"}} (no bound for Plain models). Certificates come from
    the float64 copy of the model with the bound max(gamma, verified); see lipcore.certify.
    Inputs are attacked `batch_size` at a time: `should_stop` is polled and `on_progress` called
    between batches, and `state_dir` keeps each finished (eps, batch)'s verdicts, so an
    interrupted evaluation resumes with the first batch it had not finished.
    `attacks` lists AutoAttack's attacks for version "custom" (e.g. ["apgd-ce"] for a quick run).
    """
    from lipcore.data import load_data

    log = on_log or (lambda _msg: None)
    flush_denormals()
    dev = resolve_device(device)
    loaded = _classifier(model_path, dev)
    x, y = load_data(loaded.spec, data_dir, device=dev).test_pixels(n_examples)
    wrapped = Normalized(loaded.model, loaded.mean, loaded.std).eval()
    version_used, attacks = attacks_for(version, loaded.spec.num_classes or 0, attacks)
    t0 = time.monotonic()
    result, cert = _clean_result(loaded, wrapped, x, y, batch_size, eps, version_used, attacks)
    log(f"clean accuracy {result['clean_acc']:.2f}% on {result['n']} test inputs")
    batches = _AttackBatches(
        wrapped, x, y, dev, seed, batch_size, version_used, attacks, state_dir, should_stop, on_progress, len(eps), t0
    )
    for i, e in enumerate(eps):
        robust = batches.attack(i, e)
        if robust is None:
            result["stopped"] = True
            break
        key = _record(result, e, robust, cert, y, loaded.std)
        log(
            f"eps {e:g}/255: AutoAttack {result['autoattack_acc'][key]:.2f}%"
            + (f", certified {result['certified_acc'][key]:.2f}%" if cert is not None else "")
        )
    result["seconds"] = time.monotonic() - t0
    return result


def _clean_result(
    loaded: LoadedModel,
    wrapped: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    eps: Sequence[float],
    version: str,
    attacks: list[str] | None,
) -> tuple[dict[str, Any], Any]:
    """(`evaluate_robustness`'s result before any attack, certificate) of pixel inputs x (n, c, h, w)
    with labels y (n,): the clean accuracy of `wrapped` and the float64 certificates and bounds."""
    with torch.no_grad(), full_precision():
        logits = torch.cat([wrapped(xb) for xb in x.split(batch_size)])
    cert, bounds = _certificates(loaded, x, batch_size)
    correct = logits.argmax(1) == y
    result: dict[str, Any] = {
        "n": len(y),
        "clean_acc": 100.0 * correct.float().mean().item(),
        "certified_acc": {},
        "autoattack_acc": {},
        "certificate_violations": {},
        "eps": list(eps),
        "version": version,
        "attacks": attacks,
        "units": "l2 eps/255 in [0,1] pixel space",
    }
    if bounds is not None:
        # certified_acc uses max(gamma, verified); for LLN models both bound the map to the head input
        result["lipschitz_bound"] = bounds.as_dict()
    return result, cert


def _classifier(model_path: str | Path | LoadedModel, dev: torch.device) -> LoadedModel:
    """The model to attack, loaded on `dev` in eval mode; a regression is refused."""
    own = not isinstance(model_path, LoadedModel)
    loaded = model_path if isinstance(model_path, LoadedModel) else load_model(model_path, device=dev)
    loaded.model.to(dev).eval()
    if not loaded.spec.classifies:
        raise ValueError(
            f"AutoAttack needs a classifier; evaluate the {loaded.spec.model} regression with evaluate_toy"
        )
    if own:
        # Loaded here and only ever read (attacks differentiate with respect to the inputs): its eval
        # caches may be checked by version counter, not compared by value on each of AutoAttack's
        # forwards (a tenth of a Tiny-Imagenet Resnet-SLL evaluation). The outputs are the same.
        check_caches_by_version(loaded.model)
    return loaded


def _certificates(loaded: LoadedModel, x: Tensor, batch_size: int) -> tuple[Any, Any]:
    """(certificate, bounds) of pixel inputs x from the float64 copy of the model on the same
    normalised inputs; (None, None) for an unbounded model."""
    model = loaded.model
    if getattr(model, "gamma", None) is None:
        return None, None
    mean64 = torch.tensor(loaded.mean, dtype=torch.float64, device=x.device).view(1, -1, 1, 1)
    std64 = torch.tensor(loaded.std, dtype=torch.float64, device=x.device).view(1, -1, 1, 1)
    cert, _, bounds = certify_model(model, (x.to(torch.float64) - mean64) / std64, batch_size)
    return cert, bounds


class _AttackBatches:
    """AutoAttack at one eps over the inputs `batch_size` at a time: polls `should_stop` and reports
    progress between batches, and keeps each finished (eps, batch)'s verdicts in `state_dir`
    (lipcore.batch_results)."""

    def __init__(
        self,
        wrapped: nn.Module,
        x: Tensor,
        y: Tensor,
        dev: torch.device,
        seed: int,
        batch_size: int,
        version: str,
        attacks: list[str] | None,
        state_dir: str | Path | None,
        should_stop: Callable[[], bool] | None,
        on_progress: Callable[[Progress], None] | None,
        n_eps: int,
        t0: float,
    ) -> None:
        self.wrapped, self.x, self.y, self.dev, self.seed = wrapped, x, y, dev, seed
        self.batch_size, self.version, self.attacks, self.state_dir = batch_size, version, attacks, state_dir
        self.should_stop, self.on_progress, self.n_eps, self.t0 = should_stop, on_progress, n_eps, t0
        self.starts = range(0, len(y), batch_size)

    def attack(self, i: int, e: float) -> Tensor | None:
        """(n,) bool: still correct after the attack at eps e/255 (the i-th eps); None if stopped."""
        from pyautoattack import AutoAttack  # type: ignore[import-untyped]

        aa = AutoAttack(
            self.wrapped,
            norm="L2",
            eps=e / 255.0,
            version=self.version,
            device=self.dev,
            seed=self.seed,
            attacks=self.attacks,
        )
        parts, starts, bs = [], self.starts, self.batch_size
        total = self.n_eps * len(starts)
        for j, start in enumerate(starts):
            if self.should_stop and self.should_stop():
                return None
            xb, yb = self.x[start : start + bs], self.y[start : start + bs]
            parts.append(self._batch(aa, e, start, xb, yb))
            if self.on_progress:
                done, elapsed = i * len(starts) + j + 1, time.monotonic() - self.t0
                self.on_progress(
                    Progress(
                        i + 1,
                        self.n_eps,
                        j + 1,
                        len(starts),
                        done,
                        total,
                        None,
                        None,
                        elapsed,
                        elapsed / done * (total - done),
                    )
                )
        return torch.cat(parts)

    def _batch(self, aa: Any, e: float, start: int, xb: Tensor, yb: Tensor) -> Tensor:
        """(n,) bool of one batch: from its file when an earlier run finished it, else attacked."""
        done = batch_file(self.state_dir, e, start) if self.state_dir else None
        names = list(aa.attacks_to_run)
        if done is not None and (robust := load_batch(done, len(yb), names, yb.device)) is not None:
            return robust
        x_adv, _ = aa.run_standard_evaluation(xb, yb, batch_size=self.batch_size)
        with torch.no_grad(), full_precision():
            robust = self.wrapped(x_adv.to(self.dev)).argmax(1) == yb
        if done is not None:
            save_batch(done, robust, names)
        return robust


def _record(
    result: dict[str, Any],
    e: float,
    robust: Tensor,
    cert: Any,
    y: Tensor,
    std: Sequence[float],
) -> str:
    """Attacked accuracy at eps e/255 and, with a certificate, certified accuracy and violations,
    into `result` under the returned key."""
    key = f"{e:g}"
    result["autoattack_acc"][key] = 100.0 * robust.float().mean().item()
    if cert is not None:
        # correct by the float64 certificate's own prediction (the float32 logits may differ
        # from it only at ties, and a certified input is never near a tie)
        certified = (cert.predicted == y) & (pixel_radius(cert.radius, std) > e / 255.0)
        result["certified_acc"][key] = 100.0 * certified.float().mean().item()
        result["certificate_violations"][key] = int((certified & ~robust).sum())
    return key


def layer_spectral_norms(model: nn.Module) -> list[float | None]:
    """Spectral norm of each layer's weight as the paper reports it (Toy models; None where undefined).

    Each lipcore layer says which weight that is (`paper_weight`: sandwich layers the weight of their
    equivalent feed-forward form, orthogonal Q, AOL scale * W * T); Plain layers are torch's Linear.
    """
    norms: list[float | None] = []
    state: Any = None
    with torch.no_grad():
        for layer in body_of(model):
            if isinstance(layer, nn.ReLU):
                continue
            w: Tensor | None = None
            paper_weight = getattr(layer, "paper_weight", None)
            if callable(paper_weight):
                w, state = paper_weight(state)
            elif isinstance(layer, nn.Linear):
                w = layer.weight
            norms.append(None if w is None else torch.linalg.matrix_norm(w, 2).item())
    return norms


def evaluate_toy(
    model_path: str | Path | LoadedModel,
    *,
    device: str | torch.device = "auto",
    restarts: int = 10,
    seed: int | None = None,
    on_log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Table 1 for one Toy model: per-layer Lipschitz estimates and norms, and model tightness."""
    log = on_log or (lambda _msg: None)
    flush_denormals()
    dev = resolve_device(device)
    loaded = model_path if isinstance(model_path, LoadedModel) else load_model(model_path, device=dev)
    model, spec = loaded.model.to(dev).eval(), loaded.spec
    if spec.classifies:
        raise ValueError(f"evaluate_toy is for the Toy regression, not the {spec.model} classifier")
    seed_everything(spec.seed if seed is None else seed)
    # The paper's probe points: uniform [0,1) plus 0.3 N(0,1) noise.
    x = torch.rand(64, spec.in_channels or 1) + 0.3 * torch.randn(64, spec.in_channels or 1)
    x = x.to(dev)
    model_lip = empirical_lipschitz(model, x, restarts=restarts)
    layers = [m for m in body_of(model) if not isinstance(m, nn.ReLU)]
    norms = layer_spectral_norms(model)
    per_layer = []
    h = x
    for k, layer in enumerate(layers):
        lip = empirical_lipschitz(layer, h, restarts=restarts)
        with torch.no_grad():
            h = torch.randn_like(layer(h))  # the paper probes each layer with fresh Gaussian inputs
        per_layer.append(
            {
                "layer": k,
                "type": type(layer).__name__,
                "lipschitz": lip,
                "spectral_norm": norms[k] if k < len(norms) else None,
            }
        )
        log(
            f"Layer: {k}, Lip: {lip:.4f}, Norm: {norms[k] if k < len(norms) and norms[k] is not None else float('nan'):.4f}"
        )
    gamma = getattr(model, "gamma", None)
    result = {
        "layer": spec.layer,
        "gamma": gamma,
        "lipschitz_lower_bound": model_lip,
        "tightness": model_lip / gamma if gamma else None,
        "layers": per_layer,
    }
    if gamma:
        log(f"Lipschitz lower bound {model_lip:.4f} / gamma {gamma:.2f} = {100 * model_lip / gamma:.2f}%")
    return result

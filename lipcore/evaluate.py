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

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lipcore.certify import certify_model, empirical_lipschitz, pixel_radius
from lipcore.checkpoint import LoadedModel, load_model
from lipcore.precision import full_precision
from lipcore.progress import Progress
from lipcore.runtime import flush_denormals, resolve_device, seed_everything

PAPER_EPS = (36, 72, 108)  # in 1/255 units


class Normalized(nn.Module):
    """model(normalise(x)) for x in [0, 1] pixel space: what AutoAttack must see."""

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
    model_path: str | Path | LoadedModel, *, data_dir: str | Path | None = None,
    eps: Sequence[float] = PAPER_EPS, version: str = "standard", n_examples: int | None = 1000,
    device: str | torch.device = "auto", seed: int = 0, batch_size: int = 256,
    attacks: Sequence[str] | None = None,
    on_log: Callable[[str], None] | None = None, should_stop: Callable[[], bool] | None = None,
    state_dir: str | Path | None = None, on_progress: Callable[[Progress], None] | None = None,
) -> dict[str, Any]:
    """l2 AutoAttack at each eps (in 1/255 units, pixel space) on the first `n_examples` test inputs.

    Returns {"n", "clean_acc", "certified_acc": {eps: %}, "autoattack_acc": {eps: %},
    "certificate_violations": {eps: count}, "eps", "version", "attacks", "units", "seconds",
    "lipschitz_bound": {"gamma", "verified"}} (no bound for Plain models). Certificates come from
    the float64 copy of the model with the bound max(gamma, verified); see lipcore.certify.
    Inputs are attacked `batch_size` at a time: `should_stop` is polled and `on_progress` called
    between batches, and `state_dir` keeps AutoAttack's progress per (eps, batch), so an
    interrupted evaluation resumes where it stopped.
    `attacks` lists AutoAttack's attacks for version "custom" (e.g. ["apgd-ce"] for a quick run).
    """
    from pyautoattack import AutoAttack

    from lipcore.data import load_data

    log = on_log or (lambda _msg: None)
    flush_denormals()
    dev = resolve_device(device)
    loaded = model_path if isinstance(model_path, LoadedModel) else load_model(model_path, device=dev)
    model, spec = loaded.model.to(dev).eval(), loaded.spec
    if spec.model == "Toy":
        raise ValueError("AutoAttack needs a classifier; evaluate the Toy regression with evaluate_toy")
    data = load_data(spec, data_dir, device=dev)
    x, y = data.test_pixels(n_examples)
    wrapped = Normalized(model, loaded.mean, loaded.std).eval()
    version_used, attacks = attacks_for(version, spec.num_classes or 0, attacks)
    t0 = time.monotonic()
    with torch.no_grad(), full_precision():
        logits = torch.cat([wrapped(xb) for xb in x.split(batch_size)])
    cert, bounds = None, None
    if getattr(model, "gamma", None) is not None:
        # certificates from the float64 copy of the model on the same normalised inputs
        mean64 = torch.tensor(loaded.mean, dtype=torch.float64, device=x.device).view(1, -1, 1, 1)
        std64 = torch.tensor(loaded.std, dtype=torch.float64, device=x.device).view(1, -1, 1, 1)
        cert, _, bounds = certify_model(model, (x.to(torch.float64) - mean64) / std64, batch_size)
    correct = logits.argmax(1) == y
    n = len(y)
    result: dict[str, Any] = {
        "n": n, "clean_acc": 100.0 * correct.float().mean().item(), "certified_acc": {},
        "autoattack_acc": {}, "certificate_violations": {}, "eps": list(eps), "version": version_used,
        "attacks": attacks, "units": "l2 eps/255 in [0,1] pixel space",
    }
    if bounds is not None:
        # certified_acc uses max(gamma, verified); for LLN models both bound the map to the head input
        result["lipschitz_bound"] = bounds.as_dict()
    log(f"clean accuracy {result['clean_acc']:.2f}% on {n} test inputs")
    starts = range(0, n, batch_size)
    total = len(eps) * len(starts)
    for i, e in enumerate(eps):
        radius = e / 255.0
        aa = AutoAttack(wrapped, norm="L2", eps=radius, version=version_used, device=dev, seed=seed,
                        attacks=attacks)
        parts = []
        for j, start in enumerate(starts):
            if should_stop and should_stop():
                result["stopped"] = True
                break
            state = Path(state_dir) / f"autoattack{e:g}-{start}.state" if state_dir else None
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            x_adv, _ = aa.run_standard_evaluation(xb, yb, batch_size=batch_size, state_path=state)
            with torch.no_grad(), full_precision():
                parts.append(wrapped(x_adv.to(dev)).argmax(1) == yb)
            if on_progress:
                done, elapsed = i * len(starts) + j + 1, time.monotonic() - t0
                on_progress(Progress(i + 1, len(eps), j + 1, len(starts), done, total, None, None, elapsed,
                                     elapsed / done * (total - done)))
        if result.get("stopped"):
            break
        robust = torch.cat(parts)
        key = f"{e:g}"
        result["autoattack_acc"][key] = 100.0 * robust.float().mean().item()
        if cert is not None:
            # correct by the float64 certificate's own prediction (the float32 logits may differ
            # from it only at ties, and a certified input is never near a tie)
            certified = (cert.predicted == y) & (pixel_radius(cert.radius, loaded.std) > radius)
            result["certified_acc"][key] = 100.0 * certified.float().mean().item()
            result["certificate_violations"][key] = int((certified & ~robust).sum())
        log(
            f"eps {e:g}/255: AutoAttack {result['autoattack_acc'][key]:.2f}%"
            + (f", certified {result['certified_acc'][key]:.2f}%" if cert is not None else "")
        )
    result["seconds"] = time.monotonic() - t0
    return result


def _sandwich_factors(layer: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    a, b = layer._factors()
    psi = getattr(layer, "psi", None)
    if psi is None:  # the last (linear) sandwich layer acts as if Psi = 2 I
        psi = torch.full((a.shape[0],), math.log(2.0), dtype=a.dtype, device=a.device)
    return a, b, psi


def layer_spectral_norms(model: nn.Module) -> list[float | None]:
    """Spectral norm of each layer's weight as the paper reports it (Toy models; None where undefined).

    Sandwich: W_k = 2 Psi_k^-1 B_k A_{k-1}^T Psi_{k-1}, the weight of the equivalent feed-forward
    form (A_{-1} = I, Psi_{-1} = I / 2); Orthogon: Q; AOL: scale * W * T; Plain: W.
    """
    from lipcore.layers import AolFc, AolLin, OrthogonFc, OrthogonLin, SandwichFc, SandwichLin

    norms: list[float | None] = []
    prev_a, prev_psi = None, None
    with torch.no_grad():
        for layer in model.body:
            w: Tensor | None = None
            if isinstance(layer, (SandwichFc, SandwichLin)):
                a, b, psi = _sandwich_factors(layer)
                a0 = torch.eye(b.shape[1], dtype=b.dtype, device=b.device) if prev_a is None else prev_a
                psi0 = torch.full((b.shape[1],), -math.log(2.0), dtype=b.dtype, device=b.device) if prev_psi is None else prev_psi
                w = 2 * torch.diag(torch.exp(-psi)) @ b @ a0.T @ torch.diag(torch.exp(psi0))
                prev_a, prev_psi = a, psi
            elif isinstance(layer, (OrthogonFc, OrthogonLin)):
                w = layer.effective()[0]
            elif isinstance(layer, (AolFc, AolLin)):
                w = layer.scale * layer.effective()[0]
            elif isinstance(layer, nn.Linear):
                w = layer.weight
            elif isinstance(layer, nn.ReLU):
                continue
            norms.append(None if w is None else torch.linalg.matrix_norm(w, 2).item())
    return norms


def evaluate_toy(
    model_path: str | Path | LoadedModel, *, device: str | torch.device = "auto", restarts: int = 10,
    seed: int | None = None, on_log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Table 1 for one Toy model: per-layer Lipschitz estimates and norms, and model tightness."""
    log = on_log or (lambda _msg: None)
    flush_denormals()
    dev = resolve_device(device)
    loaded = model_path if isinstance(model_path, LoadedModel) else load_model(model_path, device=dev)
    model, spec = loaded.model.to(dev).eval(), loaded.spec
    if spec.model != "Toy":
        raise ValueError(f"evaluate_toy is for the Toy model, not {spec.model}")
    seed_everything(spec.seed if seed is None else seed)
    # The paper's probe points: uniform [0,1) plus 0.3 N(0,1) noise.
    x = torch.rand(64, spec.in_channels or 1) + 0.3 * torch.randn(64, spec.in_channels or 1)
    x = x.to(dev)
    model_lip = empirical_lipschitz(model, x, restarts=restarts)
    layers = [m for m in model.body if not isinstance(m, nn.ReLU)]
    norms = layer_spectral_norms(model)
    per_layer = []
    h = x
    for k, layer in enumerate(layers):
        lip = empirical_lipschitz(layer, h, restarts=restarts)
        with torch.no_grad():
            h = torch.randn_like(layer(h))  # the paper probes each layer with fresh Gaussian inputs
        per_layer.append({"layer": k, "type": type(layer).__name__, "lipschitz": lip, "spectral_norm": norms[k] if k < len(norms) else None})
        log(f"Layer: {k}, Lip: {lip:.4f}, Norm: {norms[k] if k < len(norms) and norms[k] is not None else float('nan'):.4f}")
    gamma = getattr(model, "gamma", None)
    result = {
        "layer": spec.layer, "gamma": gamma, "lipschitz_lower_bound": model_lip,
        "tightness": model_lip / gamma if gamma else None, "layers": per_layer,
    }
    if gamma:
        log(f"Lipschitz lower bound {model_lip:.4f} / gamma {gamma:.2f} = {100 * model_lip / gamma:.2f}%")
    return result


"""What a training run measures: an epoch's running sums, the test pass after each epoch (with
certified accuracy at the paper's radii), the epoch's log line and summary.json's numbers.

The running sums are checkpointed with the run (`_Accum.__dict__`), so a resumed epoch reports what
an uninterrupted one would; lipcore.train drives all of these.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lipcore.certify import (
    PAPER_RADII,
    bound_report,
    certified_correct,
    empirical_lipschitz,
    float64_model,
    forward_rounding,
    release_float64_model,
)
from lipcore.precision import full_precision
from lipcore.spec import ExperimentSpec

LIP_BATCH = 64  # points of the final empirical Lipschitz estimate (paper: lip_batch_size)


def cert_key(eps: float) -> str:
    return f"cert_acc_{round(eps * 255)}"


@dataclass
class _Accum:
    """Running sums of one training epoch (kept in checkpoints so a resumed epoch reports the same)."""

    n: int = 0
    loss: float = 0.0
    correct: int = 0
    classify: bool = True  # False for the Toy regression (no accuracy)

    def add(self, loss: float, out: Tensor, y: Tensor) -> None:
        b = y.shape[0]
        self.n += b
        self.loss += loss * b
        if self.classify:
            self.correct += int((out.argmax(1) == y).sum())

    def summary(self) -> dict[str, float | None]:
        n = max(self.n, 1)
        return {"train_loss": self.loss / n, "train_acc": 100.0 * self.correct / n if self.classify else None}


class _DeviceAccum:
    """`_Accum`'s sums kept on the device (float64, so the checkpointed floats are exact), read on demand.

    The additions are the same float64 operations as `_Accum.add`, so a stopped and resumed epoch
    reports bit-for-bit the numbers of an uninterrupted one.
    """

    def __init__(self, start: _Accum, dev: torch.device) -> None:
        self.n, self.classify = start.n, start.classify
        self.loss = torch.tensor(start.loss, dtype=torch.float64, device=dev)
        self.correct = torch.tensor(start.correct, dtype=torch.int64, device=dev)

    def add(self, loss: Tensor, out: Tensor, y: Tensor) -> None:
        b = y.shape[0]
        self.n += b
        self.loss += loss.detach().double() * b
        if self.classify:
            self.correct += (out.detach().argmax(1) == y).sum()

    def finite(self) -> bool:
        return bool(torch.isfinite(self.loss))

    def read(self) -> _Accum:
        return _Accum(self.n, float(self.loss), int(self.correct), self.classify)


def _test_pass(
    model: nn.Module, data: Any, criterion: Any, spec: ExperimentSpec, keep_float64: bool = False
) -> dict[str, Any]:
    """Test loss and accuracy (the float32 model) and, with `cert_acc`, certified accuracy at the
    paper's radii in [0, 1] pixel space (the float64 copy of the model, bound max(gamma, verified)).
    keep_float64: keep that copy and its verified bound cached (the last epoch: the summary's bound
    is then not computed twice; on a 64x64 DNN it is half a CPU minute)."""
    model.eval()
    t0 = time.monotonic()
    n, loss, correct = 0, 0.0, 0
    certified = dict.fromkeys(PAPER_RADII, 0)
    classify = spec.classifies
    certifying = bool(spec.cert_acc and classify and getattr(model, "gamma", None) is not None)
    if certifying:
        bound = bound_report(model).used
        m64 = float64_model(model)
        head = getattr(m64, "lln_head", None)
    with torch.no_grad(), full_precision():
        w = head.normalized_weight() if certifying and head is not None else None
        for x, y in data.test_batches():
            out = model(x)
            loss += criterion(out, y).item() * y.shape[0]
            n += y.shape[0]
            if classify:
                correct += int((out.argmax(1) == y).sum())
                if certifying:
                    x64 = x.to(torch.float64)
                    logits64 = m64(x64)
                    rnd = forward_rounding(model, x64)  # the rounding allowance of every certificate
                    counts = certified_correct(
                        logits64,
                        y,
                        bound,
                        PAPER_RADII,
                        lln_weight=w,
                        std=data.std,
                        error=rnd.error(x64),
                        error_slope=rnd.e1,
                    )
                    for eps, c in counts.items():
                        certified[eps] += c
    row: dict[str, Any] = {
        "test_loss": loss / max(n, 1),
        "test_acc": 100.0 * correct / max(n, 1) if classify else None,
        "test_time_s": time.monotonic() - t0,
    }
    if certifying:
        row.update({cert_key(eps): 100.0 * c / max(n, 1) for eps, c in certified.items()})
        if not keep_float64:
            release_float64_model(model)
    return row


def _epoch_line(row: dict[str, Any], spec: ExperimentSpec) -> str:
    line = (
        f"Epoch: {row['epoch']:3d} | time: {row['train_time_s']:.1f}/{row['test_time_s']:.1f}, "
        f"loss: {row['train_loss']:.4f}/{row['test_loss']:.4f}"
    )
    if row.get("test_acc") is not None:
        line += f", acc: {row['train_acc']:.1f}/{row['test_acc']:.1f}"
    if spec.cert_acc and cert_key(PAPER_RADII[0]) in row:
        line += ", cert (pixel l2): " + "/".join(f"{row[cert_key(e)]:.1f}" for e in PAPER_RADII)
    return line + f", 100lr: {100 * row['lr']:.3f}"


def _summary(
    model: nn.Module,
    spec: ExperimentSpec,
    history: list[dict[str, Any]],
    nparams: int,
    dev: torch.device,
    restarts: int,
) -> dict[str, Any]:
    summary: dict[str, Any] = {"params": nparams, "epochs": len(history), "gamma": spec.gamma}
    if getattr(model, "gamma", None) is not None:
        # for LLN models both bound the map to the head's input (see lipcore.certify)
        summary["lipschitz_bound"] = bound_report(model).as_dict()
        release_float64_model(model)
    if history:
        last = history[-1]
        summary.update({k: v for k, v in last.items() if k.startswith(("test_", "cert_acc_"))})
    if restarts > 0:
        # The paper's probe points: uniform [0,1) plus 0.3 N(0,1) noise, shaped like an input.
        shape = (LIP_BATCH, spec.in_channels or 1) + ((spec.img_size,) * 2 if spec.img_size else ())
        x = (torch.rand(shape) + 0.3 * torch.randn(shape)).to(dev)
        lip = empirical_lipschitz(model, x, restarts=restarts)
        summary["lipschitz_lower_bound"] = lip
        summary["tightness"] = lip / spec.gamma if spec.gamma else None
    return summary

"""The paper's training recipe, resumable bit-for-bit, with hooks for live reporting and cancellation.

Adam (no weight decay) with a per-step piecewise-linear learning rate 0 -> lr at 2/5 of the epochs
-> lr/20 at 4/5 -> 0 at the end; after every epoch a test pass (loss, accuracy and, with
`cert_acc`, certified accuracy at 36/72/108 / 255 in [0, 1] pixel space, the same quantity as
eval.json: radii from the float64 copy of the model with max(gamma, verified bound), LLN-aware,
converted with min(std) when inputs are normalised); at the end the empirical Lipschitz lower
bound and its ratio to gamma, and the verified bound beside gamma.

A run directory holds `spec.json`, `metrics.json` (one object per epoch), `log.txt`,
`checkpoint.safetensors` (resumable), `model.safetensors` (final weights) and `summary.json`.
A run stopped anywhere (cancelled, or killed) and resumed from its last checkpoint ends with exactly
the weights of an uninterrupted run: the checkpoint holds model, Adam state, schedule position and
RNG states, and each epoch's batch order is a function of (seed, epoch) only.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from lipcore.certify import PAPER_RADII  # noqa: F401  (imported from here by tests)
from lipcore.checkpoint import load_train_state, save_model, save_train_state
from lipcore.losses import build_loss
from lipcore.models import build
from lipcore.progress import Progress
from lipcore.rundir import CHECKPOINT, LOG, METRICS, MODEL, SPEC, SUMMARY, RunLog, write_json
from lipcore.runtime import flush_denormals, resolve_device, rng_state, seed_everything, set_rng_state
from lipcore.spec import ExperimentSpec
from lipcore.train_metrics import _Accum, _DeviceAccum, _epoch_line, _summary, _test_pass, cert_key  # noqa: F401

PROGRESS_SYNC_S = 0.5  # on GPUs, read the loss back (a host sync) at most this often
# torch.compile backend of compile="on"/"auto"; "aot_eager" traces the same graphs without code
# generation (the tests use it: inductor's C++ build takes minutes on a busy 2-core machine).
COMPILE_BACKEND = os.environ.get("LBDN_COMPILE_BACKEND", "inductor")


@dataclass
class TrainHooks:
    """Plain callables a caller (CLI, worker) plugs in; every one is optional."""

    on_progress: Callable[[Progress], None] | None = None  # after every step
    on_epoch: Callable[[dict[str, Any]], None] | None = None  # one epoch's metrics (a resume repeats its last)
    on_checkpoint: Callable[[Path], None] | None = None  # after a resumable checkpoint is written
    should_stop: Callable[[], bool] | None = None  # polled every step: True -> checkpoint and stop
    on_log: Callable[[str], None] | None = None  # human-readable lines (also in log.txt)
    on_resume: Callable[[dict[str, int]], None] | None = None  # {"epoch", "step"} of the checkpoint resumed


@dataclass
class TrainResult:
    status: Literal["completed", "stopped"]
    run_dir: Path
    epochs_done: int
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    resumed_from: dict[str, int] | None = None
    spec: ExperimentSpec | None = None  # as resolved against the data (image folders: shape, classes)
    classes: list[str] = field(default_factory=list)  # class names in label order


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def lr_at(t: float, epochs: int, lr: float) -> float:
    """The paper's schedule at fractional epoch t (its knots use integer division, as main.py)."""
    return float(np.interp(t, [0, epochs * 2 // 5, epochs * 4 // 5, epochs], [0, lr, lr / 20.0, 0]))


def train(
    spec: ExperimentSpec,
    run_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    device: str | torch.device = "auto",
    hooks: TrainHooks | None = None,
    resume: bool = True,
    checkpoint_every: int = 1,
    lipschitz_restarts: int = 10,
    download: bool = False,
) -> TrainResult:
    """Train `spec` in `run_dir` (created if needed), continuing its checkpoint when `resume`.

    checkpoint_every: epochs between resumable checkpoints (the last epoch always writes one).
    lipschitz_restarts: restarts of the final empirical Lipschitz estimate (0 skips it).
    download: fetch a missing cifar10/cifar100/tiny_imagenet from its official source.
    """
    from lipcore.data import load_data, resolve_spec  # the data layer pulls in kornia; load lazily

    hooks = hooks or TrainHooks()
    flush_denormals()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    spec = resolve_spec(spec, data_dir)
    log = RunLog(run_dir / LOG, hooks.on_log)
    _prepare_run_dir(run_dir, spec, resume)
    seed_everything(spec.seed)
    data = load_data(spec, data_dir, device=dev, download=download)
    t = _Trainer(spec, run_dir, data, dev, hooks, log, checkpoint_every)
    epoch0, step0, accum = t.restore(resume)
    for epoch in range(epoch0, spec.epochs):
        stopped = t.run_epoch(epoch, step0 if epoch == epoch0 else 0, accum if epoch == epoch0 else None)
        if stopped is not None:
            return stopped
    return t.finish(lipschitz_restarts)


def _prepare_run_dir(run_dir: Path, spec: ExperimentSpec, resume: bool) -> None:
    """Check a checkpoint being resumed is of this experiment, or clear a previous run's outputs;
    then write spec.json."""
    ckpt = run_dir / CHECKPOINT
    if resume and ckpt.exists():
        _check_same_experiment(run_dir, spec)
    else:
        for stale in (ckpt, run_dir / MODEL, run_dir / SUMMARY):
            stale.unlink(missing_ok=True)
    write_json(run_dir / SPEC, spec.model_dump(mode="json"))


class _Trainer:
    """One training run's state (model, optimizer, history) and its steps, in the order `train`
    calls them: `restore`, `run_epoch` per epoch, `finish`. Built right after the data is loaded
    (the model's initialisation draws from the seeded RNG after the data's)."""

    def __init__(
        self,
        spec: ExperimentSpec,
        run_dir: Path,
        data: Any,
        dev: torch.device,
        hooks: TrainHooks,
        log: RunLog,
        checkpoint_every: int,
    ) -> None:
        self.spec, self.run_dir, self.data, self.dev, self.hooks, self.log = spec, run_dir, data, dev, hooks, log
        self.checkpoint_every = checkpoint_every
        self.ckpt = run_dir / CHECKPOINT
        self.model = build(spec).to(dev)
        self.criterion = build_loss(spec)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=spec.lr, weight_decay=0)
        self.steps = data.steps_per_epoch()
        self.nparams = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.classify = spec.classifies
        self.history: list[dict[str, Any]] = []
        self.resumed_from: dict[str, int] | None = None
        self.total = spec.epochs * self.steps
        self.start_time, self.start_global = 0.0, 0
        self.step_fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None

    def restore(self, resume: bool) -> tuple[int, int, _Accum]:
        """Load the checkpoint when resuming (model, Adam, RNG, position, history); returns
        (epoch, step, running sums) to continue from, (0, 0, empty) for a fresh run."""
        spec, log = self.spec, self.log
        epoch0, step0, accum = 0, 0, _Accum(classify=self.classify)
        if resume and self.ckpt.exists():
            state = load_train_state(self.ckpt)
            self.model.load_state_dict(state.model)
            self.opt.load_state_dict(state.optimizer)
            set_rng_state(state.rng)
            epoch0, step0 = state.position["epoch"], state.position["step"]
            accum = _Accum(**state.position.get("accum", {}))
            self.history = state.history
            self.resumed_from = {"epoch": epoch0, "step": step0}
            log(f"Resumed from checkpoint: {epoch0} epochs and {step0} steps done")
            if self.hooks.on_resume:
                self.hooks.on_resume(self.resumed_from)
            # The checkpoint is written before its epoch is reported (so a reported epoch is never
            # lost), hence a kill between the two leaves that epoch unreported: report it again.
            # Callers receive it at least once and must treat a repeat as the same row.
            if self.hooks.on_epoch and self.history:
                self.hooks.on_epoch(self.history[-1])
        else:
            log(f"Set global seed to {spec.seed}")
            log(f"name: {spec.run_name()}, num_params: {self.nparams:,}, device: {self.dev}")
        write_json(self.run_dir / METRICS, self.history)
        self.start_time, self.start_global = time.monotonic(), epoch0 * self.steps + step0
        self.step_fn = train_step(self.model, self.criterion, self.opt, spec, self.dev)
        return epoch0, step0, accum

    def checkpoint(self, epoch: int, step: int, acc: _Accum) -> None:
        """Write the resumable checkpoint at (epoch, step) with the epoch's running sums."""
        save_train_state(
            self.ckpt,
            model=self.model,
            optimizer=self.opt,
            spec=self.spec,
            rng=rng_state(),
            history=self.history,
            position={"epoch": epoch, "step": step, "accum": acc.__dict__},
        )
        if self.hooks.on_checkpoint:
            self.hooks.on_checkpoint(self.ckpt)

    def save_model(self) -> None:
        data = self.data
        save_model(self.run_dir / MODEL, self.model, self.spec, classes=data.classes, mean=data.mean, std=data.std)

    def run_epoch(self, epoch: int, first: int, accum: _Accum | None) -> TrainResult | None:
        """Train epoch `epoch` from step `first` (continuing `accum`'s sums), then test, record and
        checkpoint it. Returns the "stopped" result if `should_stop` asked, else None."""
        spec, hooks, steps, opt = self.spec, self.hooks, self.steps, self.opt
        assert self.step_fn is not None, "restore() first"
        self.model.train()
        t0 = time.monotonic()
        acc = _DeviceAccum(accum if accum is not None else _Accum(classify=self.classify), self.dev)
        lr = lr_at(epoch + first / steps, spec.epochs, spec.lr)
        # Host syncs (.item(), int()) stall a GPU's queue: the loss and accuracy sums stay on the
        # device and are read only when a report needs them (see _DeviceAccum). A CPU has no queue.
        sync_every_s = 0.0 if self.dev.type == "cpu" else PROGRESS_SYNC_S
        value, last_sync = float("nan"), -math.inf
        for step, (x, y) in enumerate(self.data.train_batches(epoch, first), start=first):
            lr = lr_at(epoch + (step + 1) / steps, spec.epochs, spec.lr)
            for group in opt.param_groups:
                group["lr"] = lr
            loss, out = self.step_fn(x, y)
            acc.add(loss, out, y)
            done = epoch * steps + step + 1
            now = time.monotonic()
            if now - last_sync >= sync_every_s or step + 1 == steps:
                value, last_sync = loss.item(), now
                if not math.isfinite(value) or not acc.finite():
                    raise TrainingDiverged(
                        f"loss became non-finite by epoch {epoch + 1} step {step + 1}; "
                        f"the learning rate {spec.lr} may be too high for this model"
                    )
            if hooks.on_progress:
                hooks.on_progress(self._progress(epoch, step, done, value, lr, now))
            if hooks.should_stop and hooks.should_stop():
                self.checkpoint(epoch, step + 1, acc.read())
                self.log(f"Stopped at epoch {epoch + 1} step {step + 1}; checkpoint kept")
                self.save_model()
                return self._result("stopped", epoch, {})
        self._end_epoch(epoch, acc.read(), lr, time.monotonic() - t0)
        return None

    def _progress(self, epoch: int, step: int, done: int, value: float, lr: float, now: float) -> Progress:
        elapsed = now - self.start_time
        rate = (done - self.start_global) / elapsed if elapsed > 0 else 0.0
        return Progress(
            epoch + 1,
            self.spec.epochs,
            step + 1,
            self.steps,
            done,
            self.total,
            value,
            lr,
            elapsed,
            (self.total - done) / rate if rate > 0 else None,
        )

    def _end_epoch(self, epoch: int, acc: _Accum, lr: float, train_time: float) -> None:
        """Test pass, metrics.json and the epoch line, checkpoint, on_epoch."""
        row = {"epoch": epoch + 1, **acc.summary(), "lr": lr, "train_time_s": train_time}
        last = epoch + 1 == self.spec.epochs
        row.update(_test_pass(self.model, self.data, self.criterion, self.spec, keep_float64=last))
        self.history.append(row)
        write_json(self.run_dir / METRICS, self.history)
        self.log(_epoch_line(row, self.spec))
        # checkpoint first: an epoch a caller has seen reported is never lost to a crash
        if (epoch + 1) % self.checkpoint_every == 0 or epoch + 1 == self.spec.epochs:
            self.checkpoint(epoch + 1, 0, _Accum(classify=self.classify))
        if self.hooks.on_epoch:
            self.hooks.on_epoch(row)

    def finish(self, lipschitz_restarts: int) -> TrainResult:
        """Save the final model and write summary.json (bounds, last test metrics, tightness)."""
        spec, log = self.spec, self.log
        self.save_model()
        summary = _summary(self.model, spec, self.history, self.nparams, self.dev, lipschitz_restarts)
        if summary.get("lipschitz_lower_bound") is not None:
            tight = summary.get("tightness")
            log(
                f"Lipschitz lower bound: {summary['lipschitz_lower_bound']:.4f}"
                + (f" / gamma {spec.gamma:.2f} = {100 * tight:.2f}%" if tight is not None else " (no bound)")
            )
        write_json(self.run_dir / SUMMARY, summary)
        return self._result("completed", spec.epochs, summary)

    def _result(
        self, status: Literal["completed", "stopped"], epochs_done: int, summary: dict[str, Any]
    ) -> TrainResult:
        return TrainResult(
            status, self.run_dir, epochs_done, self.history, summary, self.resumed_from, self.spec, self.data.classes
        )


def train_step(
    model: nn.Module,
    criterion: Any,
    opt: torch.optim.Optimizer,
    spec: ExperimentSpec,
    dev: torch.device,
) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(x, y) -> (loss, logits) after one forward, backward and optimizer step, as `spec` asks.

    spec.compile: "on" runs the forward and loss through torch.compile (backward through its
    AOTAutograd graph); "auto" does so on CUDA only (on the CPU compiling costs minutes and saves
    little). The eager `model` is untouched, so the test pass, certificates and checkpoints use it.
    spec.precision "bf16": forward and loss under bf16 autocast; the reparameterisations' linear
    algebra opts out (lipcore.layers.cayley) and parameters, gradients and Adam stay float32.
    """
    use_compile = spec.compile == "on" or (spec.compile == "auto" and dev.type == "cuda")
    bf16 = spec.precision == "bf16"

    def forward(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
            return criterion(out, y).float(), out

    fwd = torch.compile(forward, backend=COMPILE_BACKEND) if use_compile else forward

    def step(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        loss, out = fwd(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss, out

    return step


def _check_same_experiment(run_dir: Path, spec: ExperimentSpec) -> None:
    path = run_dir / SPEC
    if path.exists():
        old = ExperimentSpec.model_validate_json(path.read_text())
        if old != spec:
            raise ValueError(
                f"{run_dir} already holds a different experiment ({old.run_name()}, seed {old.seed}); "
                "use another directory or remove it"
            )

"""One training run on several devices: torch.distributed DistributedDataParallel, one rank per
device, ranks started by torch.multiprocessing (spawn) and joined by its ProcessContext.

The global batch is the spec's `train_batch_size`, split across the ranks (`torch.tensor_split` of
each batch of the one-device run, in the same order), and each rank's loss is weighted by its share
of the batch before backward, so DDP's gradient average is the gradient of the whole batch's mean
loss: the run means what the one-device run means. Floating-point sums are grouped differently
(each rank sums its part, then gloo/NCCL sums the ranks), so losses agree to float tolerance, not
bit for bit; random augmentation draws from each rank's own generator, so specs with `augment`
are statistically, not numerically, the one-device run.

Rank 0 alone writes the run directory (metrics, log, checkpoints, model, summary) and calls the
hooks; the other ranks write a scratch folder of their own. A cancel (rank 0's `should_stop`) or a
SIGTERM to any rank is agreed on by an all-reduce at every step, so all ranks checkpoint and stop
at the same step. A rank that dies makes `ProcessContext.join` terminate the others (no rank waits
forever in a collective; collectives also time out after `timeout_s`), and the run restarts from
its last checkpoint up to `max_restarts` times (torchrun's --max-restarts).
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException, start_processes

from lipcore import train as T
from lipcore.rundir import LOG, RunLog
from lipcore.runtime import flush_denormals, resolve_device, seed_everything, set_torch_threads
from lipcore.spec import ExperimentSpec

RESULT = ".ddp-result.pkl"  # rank 0's TrainResult, or the exception a rank raised, for the parent
SCRATCH = ".rank{rank}"  # the run-directory stand-in of rank > 0


class DistributedError(RuntimeError):
    """A rank failed: `kind` is the exception's class name ("LeaseLost", "TrainingDiverged", ...)
    or "exited" for a rank that died (signal, exit code) once no restart was left."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


@dataclass
class RankConfig:
    """What every rank needs (pickled to the spawned processes)."""

    spec: ExperimentSpec
    run_dir: Path
    devices: list[str]
    data_dir: Path | None
    hooks_factory: Callable[[], T.TrainHooks] | None
    resume: bool
    checkpoint_every: int
    lipschitz_restarts: int
    timeout_s: float
    threads: int
    init_method: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def train_distributed(
    spec: ExperimentSpec,
    run_dir: str | Path,
    *,
    devices: list[str],
    data_dir: str | Path | None = None,
    hooks_factory: Callable[[], T.TrainHooks] | None = None,
    resume: bool = True,
    checkpoint_every: int = 1,
    lipschitz_restarts: int = 10,
    timeout_s: float = 1800.0,
    max_restarts: int = 2,
    threads: int = 1,
    should_stop: Callable[[], bool] | None = None,
) -> T.TrainResult:
    """Train `spec` data-parallel on `devices` (one rank each: "cpu" ranks use gloo, "cuda:i" NCCL).

    hooks_factory: picklable, called in rank 0 to make its TrainHooks (the parent's hooks cannot
    cross a process boundary). should_stop: polled in this process; True sends SIGTERM to the ranks,
    which then checkpoint and stop together (a worker shutting down). threads: intra-op threads of
    each rank. Returns rank 0's TrainResult; raises DistributedError when a rank fails.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = RankConfig(
        spec, run_dir, list(devices), Path(data_dir) if data_dir else None, hooks_factory, resume,
        checkpoint_every, lipschitz_restarts, timeout_s, max(1, threads),
    )  # fmt: skip
    for attempt in range(max_restarts + 1):
        (run_dir / RESULT).unlink(missing_ok=True)
        cfg.init_method = f"tcp://127.0.0.1:{_free_port()}"
        ctx = start_processes(_rank_main, args=(cfg,), nprocs=len(devices), join=False, start_method="spawn")
        try:
            _join(ctx, should_stop)
        except ProcessExitedException as e:  # killed or crashed outside Python: the others are gone too
            done = _finished_result(run_dir)
            if done is not None:  # rank 0 had written the finished run: a death after it loses nothing
                return done
            if attempt == max_restarts:
                raise DistributedError("exited", f"{e} (after {max_restarts} restarts)") from None
            cfg.resume = True
            continue
        except ProcessRaisedException as e:
            raise _rank_error(run_dir, e) from None
        result = _finished_result(run_dir)
        if result is None:
            raise DistributedError("RankFailed", "rank 0 exited without writing the run's result")
        return result
    raise AssertionError("unreachable")


def _join(ctx: Any, should_stop: Callable[[], bool] | None) -> None:
    forwarded = False
    while not ctx.join(timeout=0.5):
        if not forwarded and should_stop is not None and should_stop():
            forwarded = True
            for pid in ctx.pids():
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass


def _finished_result(run_dir: Path) -> T.TrainResult | None:
    """Rank 0's TrainResult if it wrote one (it does so only once every epoch, the model and the
    summary are written), else None; the file is removed either way."""
    try:
        with (run_dir / RESULT).open("rb") as f:
            obj = pickle.load(f)
    except (OSError, pickle.UnpicklingError, ValueError, EOFError):
        return None
    (run_dir / RESULT).unlink(missing_ok=True)
    return obj if isinstance(obj, T.TrainResult) else None


def _rank_error(run_dir: Path, e: Exception) -> DistributedError:
    try:
        with (run_dir / RESULT).open("rb") as f:
            kind, message = pickle.load(f)
        return DistributedError(kind, message)
    except (OSError, pickle.UnpicklingError, ValueError, EOFError):
        return DistributedError("RankFailed", str(e)[-2000:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---- inside a rank ------------------------------------------------------------------------------
_TERM = threading.Event()


def _rank_main(rank: int, cfg: RankConfig) -> None:
    """One rank's whole run (the target of mp.start_processes)."""
    _die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: _TERM.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the ranks
    set_torch_threads(cfg.threads)
    dev = resolve_device(cfg.devices[rank])
    world = len(cfg.devices)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(
        backend, init_method=cfg.init_method, rank=rank, world_size=world, timeout=timedelta(seconds=cfg.timeout_s)
    )
    try:
        result = _train_rank(cfg, rank, world, dev)
        if rank == 0:
            _dump(cfg.run_dir / RESULT, result)
    except BaseException as e:
        if rank == 0 or not (cfg.run_dir / RESULT).exists():
            _dump(cfg.run_dir / RESULT, (type(e).__name__, str(e)))
        raise
    finally:
        gc.collect()  # DDP's reducer (in reference cycles) holds the process group: free it first
        dist.destroy_process_group()
    _exit_now()


def _exit_now() -> None:
    """End a rank whose work is done and written without interpreter finalization: gloo objects
    and threads torn down during finalization have aborted a finished rank ("terminate called
    without an active exception", SIGABRT, seen once in CI), which turned a completed run into a
    restart. Every file the rank wrote is closed by now; only stdio needs flushing."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _die_with_parent() -> None:
    """Linux: SIGKILL this rank when the process that started it dies, even by SIGKILL (a worker's
    pool process killed mid-job leaves no rank behind holding its device)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's ProcessContext still ends the ranks
        pass


def _dump(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}")
    with tmp.open("wb") as f:
        pickle.dump(obj, f)
    tmp.replace(path)


def _train_rank(cfg: RankConfig, rank: int, world: int, dev: torch.device) -> T.TrainResult:
    """lipcore.train.train's steps, with rank 0 writing `run_dir` and the others a scratch folder."""
    from lipcore.data import load_data, resolve_spec

    flush_denormals()
    spec = resolve_spec(cfg.spec, cfg.data_dir)
    own = cfg.run_dir if rank == 0 else cfg.run_dir / SCRATCH.format(rank=rank)
    own.mkdir(parents=True, exist_ok=True)
    hooks = (cfg.hooks_factory() if cfg.hooks_factory else T.TrainHooks()) if rank == 0 else T.TrainHooks()
    log = RunLog(own / LOG, hooks.on_log)
    if rank == 0:
        T._prepare_run_dir(cfg.run_dir, spec, cfg.resume)
    dist.barrier()  # rank 0 has checked or cleared the checkpoint before anyone reads it
    seed_everything(spec.seed)
    data = load_data(spec, cfg.data_dir, device=dev)
    t = _RankTrainer(spec, own, data, dev, hooks, log, cfg.checkpoint_every, rank, world, cfg.run_dir)
    epoch0, step0, accum = t.restore(cfg.resume)
    for epoch in range(epoch0, spec.epochs):
        stopped = t.run_epoch(epoch, step0 if epoch == epoch0 else 0, accum if epoch == epoch0 else None)
        if stopped is not None:
            return stopped
    return t.finish(cfg.lipschitz_restarts)


class _RankSlice:
    """The one-device run's batches, each cut into `world` contiguous parts; this rank gets its part.

    `share` is this rank's fraction of the latest global batch times `world` (1.0 for an even split):
    the weight of its loss, so that DDP's mean of the ranks' gradients is the whole batch's gradient.
    """

    def __init__(self, data: Any, rank: int, world: int) -> None:
        self._data, self.rank, self.world, self.share = data, rank, world, 1.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._data, name)

    def train_batches(self, epoch: int, first: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self._data.train_batches(epoch, first):
            xs, ys = torch.tensor_split(x, self.world)[self.rank], torch.tensor_split(y, self.world)[self.rank]
            self.share = ys.shape[0] * self.world / y.shape[0]
            yield xs, ys


class _RankTrainer(T._Trainer):
    """_Trainer of one rank: steps through DDP, sums all-reduced, rank 0 alone writes and reports."""

    def __init__(self, *args: Any) -> None:
        *base, self.rank, self.world, self.shared_dir = args
        super().__init__(*base)
        self.data = _RankSlice(self.data, self.rank, self.world)
        self.ckpt = self.shared_dir / T.CHECKPOINT  # every rank resumes from rank 0's checkpoint
        self._stop_hook = self.hooks.should_stop
        self.hooks.should_stop = self._agreed_stop
        self._epoch_end = False

    def restore(self, resume: bool) -> tuple[int, int, T._Accum]:
        epoch0, step0, accum = super().restore(resume)
        if self.rank != 0:  # the checkpoint's running sums are the ranks' total: rank 0 carries them
            accum = T._Accum(classify=self.classify)
        ids = [self.dev.index] if self.dev.type == "cuda" else None
        ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.step_fn = _ddp_step(ddp, self.criterion, self.opt, self.spec, self.dev, self.data)
        return epoch0, step0, accum

    def _agreed_stop(self) -> bool:
        mine = _TERM.is_set() or (self._stop_hook is not None and self._stop_hook())
        flag = torch.tensor([1.0 if mine else 0.0], device=self.dev)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # one float a step: every rank stops at the same step
        return bool(flag.item() > 0)

    def _total(self, acc: T._Accum) -> T._Accum:
        sums = torch.tensor([float(acc.n), acc.loss, float(acc.correct)], dtype=torch.float64, device=self.dev)
        dist.all_reduce(sums)
        return T._Accum(int(sums[0]), float(sums[1]), int(sums[2]), acc.classify)

    def checkpoint(self, epoch: int, step: int, acc: T._Accum) -> None:
        if not self._epoch_end:  # a stop mid-epoch: every rank is here, with its own partial sums
            acc = self._total(acc)
        if self.rank == 0:
            super().checkpoint(epoch, step, acc)

    def save_model(self) -> None:
        if self.rank == 0:
            super().save_model()

    def _end_epoch(self, epoch: int, acc: T._Accum, lr: float, train_time: float) -> None:
        total = self._total(acc)
        if self.rank == 0:
            self._epoch_end = True
            try:
                super()._end_epoch(epoch, total, lr, train_time)
            finally:
                self._epoch_end = False

    def finish(self, lipschitz_restarts: int) -> T.TrainResult:
        if self.rank == 0:
            return super().finish(lipschitz_restarts)
        return T.TrainResult("completed", self.run_dir, self.spec.epochs, [], {}, None, self.spec, self.data.classes)


def _ddp_step(
    ddp: torch.nn.Module, criterion: Any, opt: torch.optim.Optimizer, spec: ExperimentSpec, dev: torch.device, data: Any
) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """lipcore.train.train_step through DDP, eager, with the loss weighted by the rank's batch share."""
    bf16 = spec.precision == "bf16"

    def step(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = ddp(x)
            loss = criterion(out, y).float()
        opt.zero_grad(set_to_none=True)
        (loss * data.share).backward()
        opt.step()
        return loss, out

    return step

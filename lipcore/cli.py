"""`python -m lipcore`: the paper's `main.py` command line, flag for flag, plus a few of our own.

Every command of the paper's README runs unchanged with `python main.py` replaced by
`python -m lipcore`. Flags the paper has keep its names and defaults; `--layer`, `--scale` and
`--loss` default to the model's own choice (for the paper's default model, Resnet, that is the
paper's SLL / xlarge / xent). The experiment's flags are generated from the spec's fields
(lipcore.catalog.flags: a new spec field is a new flag), so the spec's additions are flags too
(--data_path, --offset, --compile, --precision). Our other additions: --data_dir, --device,
--resume, --threads, --download, --checkpoint_every, --lip-restarts, and for eval
--attack-version, --attacks, --n-examples, --eps.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lipcore.catalog.flags import add_spec_flags, spec_fields
from lipcore.spec import ExperimentSpec

EXIT_USAGE, EXIT_FAILED, EXIT_STOPPED = 2, 1, 130


def parser() -> argparse.ArgumentParser:
    """The paper's flags (generated from the spec's fields, lipcore.catalog.flags) and ours."""
    p = argparse.ArgumentParser(
        prog="python -m lipcore",
        description="Train or evaluate a Lipschitz-bounded network (Wang & Manchester, ICML 2023).",
    )
    p.add_argument("--mode", choices=["train", "eval"], default="train")
    add_spec_flags(p.add_argument_group("experiment (the spec's fields; unset flags take its defaults)"))
    p.add_argument("--root_dir", default="./saved_models")
    p.add_argument(
        "--num_workers",
        type=int,
        default=4,
        help="accepted for compatibility; unused (batches are assembled on the device)",
    )
    ours = p.add_argument_group("lbdn additions")
    ours.add_argument("--data_dir", default=None, help="dataset directory (default $LBDN_DATA_DIR or ./data)")
    ours.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    ours.add_argument("--resume", action="store_true", help="continue the run directory's checkpoint")
    ours.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default $LBDN_TORCH_THREADS, $OMP_NUM_THREADS, else the usable cores)",
    )
    ours.add_argument(
        "--download",
        action="store_true",
        help="fetch cifar10/cifar100/tiny_imagenet from the official source if missing",
    )
    ours.add_argument("--checkpoint_every", type=int, default=1, help="epochs between resumable checkpoints")
    ours.add_argument(
        "--lip-restarts",
        dest="lip_restarts",
        type=int,
        default=10,
        help="restarts of the empirical Lipschitz estimate after training / in Toy eval (0 skips)",
    )
    _eval_flags(ours)
    return p


def _eval_flags(ours: argparse._ArgumentGroup) -> None:
    ours.add_argument(
        "--attack-version",
        dest="attack_version",
        default="standard",
        choices=["standard", "plus", "rand", "custom"],
        help="AutoAttack version (eval)",
    )
    ours.add_argument(
        "--attacks",
        nargs="+",
        default=None,
        help="with --attack-version custom: AutoAttack attacks to run (apgd-ce, apgd-t, fab-t, square, ...)",
    )
    ours.add_argument(
        "--n-examples",
        dest="n_examples",
        type=int,
        default=None,
        help="evaluate on the first N test inputs (default: all)",
    )
    ours.add_argument("--eps", type=float, nargs="+", default=[36, 72, 108], help="l2 radii in 1/255 units")


def spec_from_args(args: argparse.Namespace) -> ExperimentSpec:
    """The ExperimentSpec of a parsed command line (raises pydantic.ValidationError)."""
    return ExperimentSpec(**spec_fields(args))


class _Terminal:
    """Progress bar on a terminal (rich), plain lines otherwise; Ctrl-C asks for a clean stop."""

    def __init__(self) -> None:
        self.stop_requested = False
        self.tty = sys.stdout.isatty()
        self.progress: Any = None  # rich.progress.Progress on a terminal (imported only there)
        self.task: Any = None

    def __enter__(self) -> _Terminal:
        if self.tty:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"),
                BarColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
            )
            self.progress.__enter__()
        self._old = signal.signal(signal.SIGINT, self._interrupt)
        return self

    def __exit__(self, *exc: Any) -> None:
        signal.signal(signal.SIGINT, self._old)
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def _interrupt(self, *_: Any) -> None:
        if self.stop_requested:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.stop_requested = True
        self.log("Stopping after this step (checkpoint kept); Ctrl-C again to abort at once")

    def log(self, msg: str) -> None:
        if self.progress is not None:
            self.progress.console.print(msg, markup=False, highlight=False)
        else:
            print(msg, flush=True)

    def on_progress(self, p: Any) -> None:
        if self.progress is None:
            return
        info = f"step {p.step}/{p.steps} loss {p.loss:.4f} lr {p.lr:.2e}"
        if self.task is None:
            self.task = self.progress.add_task("train", total=p.total_steps, epoch="", info="")
        self.progress.update(self.task, completed=p.global_step, epoch=f"{p.epoch}/{p.epochs}", info=info)


def _train(spec: ExperimentSpec, args: argparse.Namespace, run_dir: Path) -> int:
    from lipcore.train import TrainHooks, train

    with _Terminal() as term:
        hooks = TrainHooks(on_progress=term.on_progress, on_log=term.log, should_stop=lambda: term.stop_requested)
        result = train(
            spec,
            run_dir,
            data_dir=args.data_dir,
            device=args.device,
            hooks=hooks,
            resume=args.resume,
            checkpoint_every=args.checkpoint_every,
            download=args.download,
            lipschitz_restarts=args.lip_restarts,
        )
    if result.status == "stopped":
        print(f"Stopped. Continue with the same command plus --resume (run directory {run_dir})")
        return EXIT_STOPPED
    print(f"Done: {run_dir}")
    return 0


def _eval(spec: ExperimentSpec, args: argparse.Namespace, run_dir: Path) -> int:
    from lipcore import evaluate as ev
    from lipcore.checkpoint import load_model
    from lipcore.paper_checkpoint import PAPER_CHECKPOINT
    from lipcore.rundir import EVAL, EVAL_TOY, MODEL, write_json

    model_path = run_dir / MODEL
    if not model_path.exists():
        paper = run_dir / PAPER_CHECKPOINT
        if not paper.exists():
            print(
                f"error: no trained model at {model_path} (nor a paper {PAPER_CHECKPOINT}); run the same "
                "command with --mode train first",
                file=sys.stderr,
            )
            return EXIT_FAILED
        # A run directory of the paper's own code: its torch.save state dict, read safely.
        print(f"Evaluating the paper checkpoint {paper} (no {MODEL} here); spec from the command line")
        model_path = load_model(paper, spec)  # type: ignore[assignment]
    if not spec.classifies:  # a regression has no classes to attack: Table 1's study instead
        result = ev.evaluate_toy(model_path, device=args.device, on_log=print, restarts=max(args.lip_restarts, 1))
        result["model_file"] = model_path.name if isinstance(model_path, Path) else PAPER_CHECKPOINT
        write_json(run_dir / EVAL_TOY, result)
    else:
        result = ev.evaluate_robustness(
            model_path,
            data_dir=args.data_dir,
            eps=args.eps,
            version=args.attack_version,
            n_examples=args.n_examples,
            device=args.device,
            batch_size=spec.test_batch_size,
            on_log=print,
            attacks=args.attacks,
            state_dir=run_dir,
        )
        result["model_file"] = model_path.name if isinstance(model_path, Path) else PAPER_CHECKPOINT
        write_json(run_dir / EVAL, result)
    print(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        spec = spec_from_args(args)
    except ValidationError as e:
        msgs = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
        print(f"error: invalid experiment: {msgs}", file=sys.stderr)
        return EXIT_USAGE
    from lipcore.runtime import set_torch_threads, torch_threads

    set_torch_threads(args.threads or torch_threads(1))  # before any torch work (lipcore.runtime)
    try:
        run_dir = Path(spec.train_dir(args.root_dir))
        return _train(spec, args, run_dir) if args.mode == "train" else _eval(spec, args, run_dir)
    except (FileNotFoundError, ValueError) as e:  # missing data, bad folders, mismatched run dirs
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED

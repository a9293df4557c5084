"""Training-step speed of today's lipcore against a baseline commit, measured in one run.

    python bench/step.py [--baseline cc48de5] [--model KWL --layer Sandwich --scale small]
                         [--dataset cifar10] [--batch 256] [--rounds 5] [--steps 3] [--device cpu]
                         [--threads N] [--compile-current]

A train step is forward + loss + backward + Adam on a fixed random batch of the dataset's shape.
The baseline's `lipcore/` is extracted with `git archive <commit> lipcore` into a temporary folder.
Each implementation runs in its own worker process (so both can be imported as `lipcore`); the
parent alternates them, `--steps` steps each, for `--rounds` rounds, so both see the same machine
load, and prints median step milliseconds (and the median of the per-round ratios, steadier when
the load drifts), aten ops per step (torch.profiler: every `aten::` event
of one step, nested ones included) and the ratios current / baseline. Worker processes sleep
(blocked on a pipe) while the other one runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ---- worker side ------------------------------------------------------------------------------
def _train_step(args: argparse.Namespace):
    """(step, sync): one train step of the args' model on a fixed random batch, and a device sync.
    Imports the `lipcore` first on sys.path (the worker puts the one it measures there)."""
    import torch

    from lipcore.losses import build_loss
    from lipcore.models import build
    from lipcore.spec import ExperimentSpec

    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    extra = json.loads(args.spec_extra)
    spec = ExperimentSpec(
        model=args.model, layer=args.layer, scale=args.scale, dataset=args.dataset, loss=args.loss, **extra
    )
    model = build(spec).to(dev)
    criterion = build_loss(spec)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    shape = (args.batch, spec.in_channels, spec.img_size, spec.img_size)
    x = torch.rand(shape, device=dev)
    y = torch.randint(0, spec.num_classes, (args.batch,), device=dev)

    def forward(x, y):
        return criterion(model(x), y)

    # (as lipcore.train does with compile "on": forward and loss compiled, backward through its graph)
    fwd = torch.compile(forward) if args.compile_this else forward

    def step() -> None:
        loss = fwd(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    model.train()
    return step, sync


def _worker(args: argparse.Namespace) -> None:
    """Build the model from the lipcore under args.worker and answer commands on stdin."""
    sys.path.insert(0, args.worker)
    step, sync = _train_step(args)
    for line in sys.stdin:
        cmd, *rest = line.split()
        if cmd == "time":
            times = []
            for _ in range(int(rest[0])):
                sync()
                t0 = time.perf_counter()
                step()
                sync()
                times.append(time.perf_counter() - t0)
            reply = {"times": times}
        elif cmd == "ops":
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
                sync()
            reply = {"ops": sum(1 for e in prof.events() if e.name.startswith("aten::"))}
        else:
            break
        print(json.dumps(reply), flush=True)


# ---- parent side ------------------------------------------------------------------------------
class Worker:
    def __init__(self, root: Path, args: argparse.Namespace, compile_this: bool = False) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        cmd = [sys.executable, __file__, "--worker", str(root)] + _forward(args)
        if compile_this:
            cmd.append("--compile-this")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=root)

    def ask(self, line: str) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError(f"worker {self.proc.args} died (see its stderr above)")
        return json.loads(reply)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _forward(args: argparse.Namespace) -> list[str]:
    return [
        "--model",
        args.model,
        "--layer",
        args.layer,
        "--scale",
        args.scale,
        "--dataset",
        args.dataset,
        "--loss",
        args.loss,
        "--batch",
        str(args.batch),
        "--device",
        args.device,
        "--spec-extra",
        args.spec_extra,
        "--threads",
        str(args.threads),
    ]


def extract(commit: str, into: Path) -> Path:
    """`git archive <commit> lipcore | tar -x -C into`; returns into. `commit` may also be a folder
    holding the baseline's lipcore/ (a machine without the history: a GPU box gets a copy)."""
    if (Path(commit) / "lipcore").is_dir():
        return Path(commit).resolve()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "lipcore"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def compare(args: argparse.Namespace) -> dict[str, float]:
    """Alternate baseline and current; returns the medians and ratios (also printed)."""
    with tempfile.TemporaryDirectory(prefix="lbdn-baseline-") as tmp:
        base_root = extract(args.baseline, Path(tmp))
        workers = {"baseline": Worker(base_root, args), "current": Worker(ROOT, args, args.compile_current)}
        try:
            times: dict[str, list[float]] = {k: [] for k in workers}
            round_ratios: list[float] = []
            for w in workers.values():
                w.ask("time 2")  # warm-up (allocator, MKL, first-call paths)
            for r in range(args.rounds):
                this = {name: w.ask(f"time {args.steps}")["times"] for name, w in workers.items()}
                for name, t in this.items():
                    times[name] += t
                round_ratios.append(statistics.median(this["current"]) / statistics.median(this["baseline"]))
                print(
                    f"round {r + 1}/{args.rounds}: "
                    + ", ".join(f"{k} {1e3 * statistics.median(v):.1f} ms" for k, v in times.items()),
                    flush=True,
                )
            ops = {k: w.ask("ops")["ops"] for k, w in workers.items()}
        finally:
            for w in workers.values():
                w.close()
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    result = {
        "baseline_ms": ms["baseline"],
        "current_ms": ms["current"],
        "ms_ratio": ms["current"] / ms["baseline"],
        # The machine's load drifts between rounds; the ratio within each round (both measured
        # back to back) is the steadier figure.
        "round_ratio_median": statistics.median(round_ratios),
        "round_ratios": round_ratios,
        "baseline_ops": ops["baseline"],
        "current_ops": ops["current"],
        "ops_ratio": ops["current"] / ops["baseline"],
    }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument(
        "--baseline", default="cc48de5", help="commit whose lipcore/ is the baseline, or a folder holding that lipcore/"
    )
    ap.add_argument("--model", default="KWL")
    ap.add_argument("--layer", default="Sandwich")
    ap.add_argument("--scale", default="small")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--loss", default="multimargin")
    ap.add_argument("--spec-extra", default="{}", help="more ExperimentSpec fields as JSON, e.g. '{\"lln\": true}'")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per implementation per round")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch.set_num_threads in both workers (0: torch's default, one per core)",
    )
    ap.add_argument(
        "--compile-current",
        action="store_true",
        help="torch.compile the current worker's forward+loss (with --baseline HEAD: compiled vs eager)",
    )
    ap.add_argument("--compile-this", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")
    args = ap.parse_args()
    if args.worker:
        _worker(args)
        return
    import torch

    print(
        f"{args.model}-{args.layer}-{args.scale} {args.dataset}, batch {args.batch}, device {args.device}, "
        f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads, baseline {args.baseline}",
        flush=True,
    )
    r = compare(args)
    print(f"step ms   : baseline {r['baseline_ms']:.1f}  current {r['current_ms']:.1f}  ratio {r['ms_ratio']:.3f}")
    print(
        f"per-round : ratios {', '.join(f'{x:.3f}' for x in r['round_ratios'])}; median {r['round_ratio_median']:.3f}"
    )
    print(f"aten ops  : baseline {r['baseline_ops']}  current {r['current_ops']}  ratio {r['ops_ratio']:.3f}")
    if args.json:
        print(json.dumps(r))


if __name__ == "__main__":
    main()

"""Training benchmarks: throughput on real CIFAR-10, and the Toy study of Table 1 beside the paper.

    python bench/train.py throughput [--device cuda] [--steps 20] [--models KWL-Sandwich,...]
    python bench/train.py toy [--epochs 200] [--seeds 123,43,13,7,365] [--gammas 1,5,10]
                              [--layers Sandwich,SLL,Orthogon,Aol] [--out toy.json]

throughput: images/second of training steps (augmentation on the device, forward, backward, Adam)
and of evaluation (eval-mode forward) for each layer family, on the real CIFAR-10 JPEGs of
../shared/datasets (unpacked once into ~/.cache/lbdn-bench, read as an image folder), with each
family's ratio to the Plain network measured in the same process.

toy: trains the Toy network of Table 1 for every layer, gamma and seed (the paper's 200 epochs by
default) and prints its Lipschitz tightness (empirical lower bound / gamma) as mean +- sample
standard deviation over the seeds, with the range, next to the paper's numbers (read from
../shared/paper-results.md). A single seed misleads: tightness at gamma 10 moves by several points
from seed to seed. `--out` keeps every finished run in a JSON file; a rerun with the same file
skips the runs already there, so a long sweep can be interrupted and continued.
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lipcore.data import load_data
from lipcore.losses import build_loss
from lipcore.models import build
from lipcore.runtime import flush_denormals, resolve_device
from lipcore.spec import ExperimentSpec

SHARED = Path(os.environ.get("LBDN_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
CACHE = Path(os.environ.get("LBDN_BENCH_CACHE", Path.home() / ".cache" / "lbdn-bench"))
console = Console()

THROUGHPUT_MODELS = {
    "KWL-Plain": dict(model="KWL", layer="Plain", scale="small"),
    "KWL-Sandwich": dict(model="KWL", layer="Sandwich", scale="small"),
    "KWL-Orthogon": dict(model="KWL", layer="Orthogon", scale="small"),
    "KWL-Aol": dict(model="KWL", layer="Aol", scale="small"),
    "Resnet-SLL": dict(model="Resnet", layer="SLL", scale="small"),
}


def cifar_folder() -> Path:
    """The real CIFAR-10 JPEGs as an image folder (train/<class>/*.jpg), unpacked once."""
    root = CACHE / "cifar10-jpeg"
    if not (root / "train").is_dir():
        archive = SHARED / "datasets" / "cifar10-jpeg-train.tar.gz"
        console.print(f"unpacking {archive} into {root} ...")
        CACHE.mkdir(parents=True, exist_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp, tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
            Path(tmp, "train").rename(root / "train")
    return root


def throughput(args: argparse.Namespace) -> None:
    dev = resolve_device(args.device)
    flush_denormals()
    folder = cifar_folder()
    table = Table(title=f"CIFAR-10 JPEG (real), batch {args.batch}, device {dev}")
    for col in ("model", "params", "train img/s", "eval img/s", "train vs Plain", "eval vs Plain"):
        table.add_column(col, justify="right")
    base: tuple[float, float] | None = None
    common = ExperimentSpec(
        model="KWL",
        dataset="image_folder",
        data_path=str(folder),
        loss="multimargin",
        train_batch_size=args.batch,
        test_batch_size=args.batch,
    )
    t0 = time.monotonic()
    data = load_data(common, CACHE, device=dev)
    console.print(f"loaded {data.train_size} + {data.test_size} images in {time.monotonic() - t0:.1f} s")
    for name in args.models.split(","):
        spec = ExperimentSpec(**{**data.spec.model_dump(), **THROUGHPUT_MODELS[name], "gamma": 1.0})
        torch.manual_seed(0)
        model = build(spec).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = build_loss(spec)
        train_ips = _train_rate(model, opt, loss_fn, data, args.steps, dev)
        eval_ips = _eval_rate(model, data, args.steps, dev)
        if base is None:
            base = (train_ips, eval_ips)
        params = sum(p.numel() for p in model.parameters())
        table.add_row(
            name,
            f"{params:,}",
            f"{train_ips:,.0f}",
            f"{eval_ips:,.0f}",
            f"{train_ips / base[0]:.2f}x",
            f"{eval_ips / base[1]:.2f}x",
        )
        del model, opt
    console.print(table)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _train_rate(model, opt, loss_fn, data, steps: int, dev: torch.device) -> float:
    model.train()
    batches = data.train_batches(0)
    for _ in range(2):  # warm-up
        x, y = next(batches)
        loss_fn(model(x), y).backward()
        opt.step()
    _sync(dev)
    t0, n = time.perf_counter(), 0
    for _ in range(steps):
        x, y = next(batches)
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        n += len(y)
    _sync(dev)
    return n / (time.perf_counter() - t0)


def _eval_rate(model, data, steps: int, dev: torch.device) -> float:
    model.eval()
    with torch.no_grad():
        batches = data.test_batches()
        model(next(batches)[0])  # warm-up, fills the eval caches
        _sync(dev)
        t0, n = time.perf_counter(), 0
        for _, (x, y) in zip(range(steps), batches):
            model(x)
            n += len(y)
        _sync(dev)
    return n / (time.perf_counter() - t0)


def paper_table1(path: Path) -> dict[tuple[str, str], float]:
    """{(layer, gamma): tightness %} from the paper's Table 1 in paper-results.md."""
    names = {"Sandwich": "Sandwich", "SLL": "SLL", "Orthogonal (Cayley)": "Orthogon", "AOL": "Aol"}
    out: dict[tuple[str, str], float] = {}
    text = path.read_text().split("## Table 1", 1)[1].split("##", 1)[0]
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] in names:
            for gamma, value in zip(("1", "5", "10"), cells[1:4]):
                out[(names[cells[0]], gamma)] = float(value)
    return out


def _spread(values: list[float]) -> tuple[float, float, float, float]:
    """(mean, sample std (0 for one value), min, max) of a non-empty list."""
    m = sum(values) / len(values)
    sd = (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return m, sd, min(values), max(values)


def _toy_run(layer: str, g: str, seed: int, args: argparse.Namespace, folder: Path) -> dict:
    """Train one Toy network into `folder`: its tightness (%), final test MSE and seconds taken."""
    from lipcore.evaluate import evaluate_toy
    from lipcore.train import train

    spec = ExperimentSpec(model="Toy", layer=layer, gamma=float(g), epochs=args.epochs, seed=seed)
    t0 = time.monotonic()
    run = train(spec, folder, device=args.device, lipschitz_restarts=0)
    result = evaluate_toy(run.run_dir / "model.safetensors", device=args.device, restarts=10)
    return {
        "layer": layer,
        "gamma": g,
        "seed": seed,
        "epochs": args.epochs,
        "tightness": 100 * result["tightness"],
        "test_mse": run.metrics[-1]["test_loss"],
        "seconds": time.monotonic() - t0,
    }


def toy(args: argparse.Namespace) -> None:
    import json

    paper = paper_table1(SHARED / "paper-results.md")
    gammas, layers = args.gammas.split(","), args.layers.split(",")
    seeds = [int(s) for s in (args.seeds or str(args.seed)).split(",")]
    out = Path(args.out) if args.out else None
    done: dict[str, dict] = json.loads(out.read_text()) if out and out.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for layer in layers:
                for g in gammas:
                    key = f"{layer}|{g}|{seed}|{args.epochs}"
                    if key in done or args.report_only:
                        continue
                    done[key] = _toy_run(layer, g, seed, args, Path(tmp) / f"{layer}-{g}-{seed}")
                    if out:
                        out.write_text(json.dumps(done, indent=1))
                    console.print(
                        f"seed {seed:4d} {layer:9s} gamma {g:>3s}: tightness "
                        f"{done[key]['tightness']:6.2f}% (paper {paper.get((layer, g), float('nan')):.1f}%), "
                        f"test mse {done[key]['test_mse']:.4f}, {done[key]['seconds']:.0f} s"
                    )
    _toy_table(done, paper, args.epochs, gammas, layers, seeds)


def _toy_table(
    done: dict[str, dict],
    paper: dict[tuple[str, str], float],
    epochs: int,
    gammas: list[str],
    layers: list[str],
    seeds: list[int],
) -> None:
    """Print the tightness table (rich, then Markdown for the README): ours over seeds, the paper's."""
    table = Table(
        title=f"Table 1: Lipschitz tightness (%), Toy, {epochs} epochs, "
        f"mean +- std [min, max] over seeds {','.join(map(str, seeds))}"
    )
    table.add_column("layer")
    for g in gammas:
        table.add_column(f"gamma {g}: ours", justify="right")
        table.add_column("paper", justify="right")
    md = ["| layer | " + " | ".join(f"gamma {g}" for g in gammas) + " |", "|---" * (len(gammas) + 1) + "|"]
    for layer in layers:
        row = [layer]
        for g in gammas:
            vals = [done[k]["tightness"] for s in seeds if (k := f"{layer}|{g}|{s}|{epochs}") in done]
            cell = "-"
            if vals:
                m, sd, lo, hi = _spread(vals)
                cell = f"{m:.1f} +- {sd:.1f} [{lo:.1f}, {hi:.1f}]" + (
                    "" if len(vals) == len(seeds) else f" (n={len(vals)})"
                )
            row += [cell, f"{paper.get((layer, g), float('nan')):.1f}"]
        table.add_row(*row)
        md.append(
            "| " + " | ".join([layer] + [f"{row[1 + 2 * i]} ({row[2 + 2 * i]})" for i in range(len(gammas))]) + " |"
        )
    console.print(table)
    print("\n".join(md))  # the same table in Markdown, ours (paper), for the README


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--device", default="auto")
    t.add_argument("--batch", type=int, default=256)
    t.add_argument("--steps", type=int, default=10)
    t.add_argument("--models", default=",".join(THROUGHPUT_MODELS))
    y = sub.add_parser("toy")
    y.add_argument("--device", default="auto")
    y.add_argument("--epochs", type=int, default=200)
    y.add_argument("--seed", type=int, default=123, help="one seed (ignored when --seeds is given)")
    y.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 123,43,13,7,365")
    y.add_argument("--out", default=None, help="JSON file of finished runs (continued when it exists)")
    y.add_argument("--report-only", action="store_true", help="print the table of the runs in --out, train nothing")
    y.add_argument("--gammas", default="1,5,10")
    y.add_argument("--layers", default="Sandwich,SLL,Orthogon,Aol")
    args = ap.parse_args()
    throughput(args) if args.part == "throughput" else toy(args)


if __name__ == "__main__":
    main()

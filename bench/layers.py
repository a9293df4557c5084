"""Speed of the layer families and of the KWL variants: forward, cached-eval forward, forward+backward.

    python bench/layers.py [--device cpu|cuda] [--batch 256] [--min-time 1.0] [--dtype float32]

Times are medians from torch.utils.benchmark (warm-up included) and are also printed as ratios to
the Plain (unconstrained) baseline measured in the same process, which is what later speed-ups
should be compared on. Train-mode forwards recompute the reparameterisation (Cayley transforms,
rescalings) every call; eval-mode forwards reuse the cached factors. "fwd+bwd ops" counts the aten ops of one forward+backward
(torch.profiler), the CPU-side proxy of GPU kernel launches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lipcore import layers as L
from lipcore.models import build
from lipcore.spec import ExperimentSpec


def timed(fn, min_time: float) -> float:
    """Median seconds per call of fn()."""
    fn()  # warm-up (also fills eval caches)
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_time).median


def count_ops(fn) -> int:
    """aten ops (torch.profiler events, nested ones included) of one call of fn: the launch count proxy."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def measure(module: nn.Module, x: torch.Tensor, min_time: float) -> tuple[float, float, float, int]:
    """(train forward, eval forward, train forward+backward seconds per batch, fwd+bwd aten ops)."""
    module.train()

    def fwd() -> None:
        with torch.no_grad():
            module(x)

    def fwd_bwd() -> None:
        module.zero_grad(set_to_none=True)
        module(x).float().sum().backward()

    def sync(fn):
        def run() -> None:
            fn()
            if x.is_cuda:
                torch.cuda.synchronize()

        return run

    t_train = timed(sync(fwd), min_time)
    t_fb = timed(sync(fwd_bwd), min_time)
    ops = count_ops(fwd_bwd)
    module.eval()
    t_eval = timed(sync(fwd), min_time)
    module.train()
    return t_train, t_eval, t_fb, ops


def layer_cases(c: int, n: int, f: int) -> dict[str, dict[str, nn.Module]]:
    return {
        f"conv {c}->{c}, 3x3, {n}x{n}": {
            "Plain": nn.Sequential(L.PlainConv(c, c, 3), nn.ReLU()),
            "Sandwich": L.SandwichConv(c, c, 3, input_size=n),
            "Orthogon": L.OrthogonConv(c, c, 3, input_size=n),
            "Aol": L.AolConv(c, c, 3),
            "SLL": L.SLLBlockConv(c, c, 3),
        },
        f"fc {f}->{f}": {
            "Plain": nn.Sequential(nn.Linear(f, f), nn.ReLU()),
            "Sandwich": L.SandwichFc(f, f),
            "Orthogon": L.OrthogonFc(f, f),
            "Aol": L.AolFc(f, f),
            "SLL": L.SLLBlockFc(f, f),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per measurement")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--features", type=int, default=1024)
    ap.add_argument("--only-cache-guard", action="store_true", help="print only the eval-cache guard table")
    args = ap.parse_args()
    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    console = Console()
    console.print(
        f"torch {torch.__version__}, device {dev}"
        + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else f", {torch.get_num_threads()} threads")
        + f", batch {args.batch}, {args.dtype}"
    )
    torch.manual_seed(0)

    groups = dict(layer_cases(args.channels, 32, args.features))
    kwl = {}
    for layer in ("Plain", "Sandwich", "Orthogon", "Aol"):
        spec = ExperimentSpec(model="KWL", layer=layer, scale="small", dataset="cifar10", loss="multimargin")
        kwl[layer] = build(spec)
    groups["KWL small, cifar10 32x32"] = kwl

    for title, modules in ({} if args.only_cache_guard else groups).items():
        table = Table(title=title)
        for col in ("family", "params", "train fwd ms", "eval fwd ms", "fwd+bwd ms", "fwd+bwd / Plain", "fwd+bwd ops"):
            table.add_column(col, justify="right")
        rows = {}
        for name, module in modules.items():
            module = module.to(dev, dtype)
            if title.startswith("conv"):
                x = torch.randn(args.batch, args.channels, 32, 32, device=dev, dtype=dtype)
            elif title.startswith("fc"):
                x = torch.randn(args.batch, args.features, device=dev, dtype=dtype)
            else:
                x = torch.rand(args.batch, 3, 32, 32, device=dev, dtype=dtype)
            rows[name] = measure(module, x, args.min_time)
            params = sum(p.numel() for p in module.parameters())
            base = rows["Plain"][2]
            t = rows[name]
            table.add_row(
                name,
                f"{params:,}",
                f"{1e3 * t[0]:.2f}",
                f"{1e3 * t[1]:.2f}",
                f"{1e3 * t[2]:.2f}",
                f"{t[2] / base:.2f}x",
                f"{t[3]:,}",
            )
        console.print(table)
    cache_check_table(console, groups, args, dev, dtype)


def cache_check_table(console: Console, groups: dict, args: argparse.Namespace, dev, dtype) -> None:
    """What the stale-cache guard costs: comparing every reparameterised layer's parameters with the
    exact copy its eval cache was computed from (torch.equal), against the whole eval forward."""
    table = Table(title="eval-cache guard (exact parameter comparison) per eval forward")
    for col in ("case", "family", "compared params", "guard ms", "eval fwd ms", "guard / eval fwd"):
        table.add_column(col, justify="right")
    for title, modules in groups.items():
        for name, module in modules.items():
            if name == "Plain":
                continue
            module = module.to(dev, dtype).eval()
            layers = [m for m in module.modules() if isinstance(m, L.Reparameterized)]
            if title.startswith("conv"):
                x = torch.randn(args.batch, args.channels, 32, 32, device=dev, dtype=dtype)
            elif title.startswith("fc"):
                x = torch.randn(args.batch, args.features, device=dev, dtype=dtype)
            else:
                x = torch.rand(args.batch, 3, 32, 32, device=dev, dtype=dtype)
            with torch.no_grad():
                module(x)  # fills the caches

            def guard() -> None:
                for m in layers:
                    assert m._cache_valid(m._cache, tuple(m.parameters(recurse=False)))

            def fwd() -> None:
                with torch.no_grad():
                    module(x)

            t_guard, t_fwd = timed(guard, args.min_time), timed(fwd, args.min_time)
            n = sum(p.numel() for m in layers for p in m.parameters(recurse=False))
            table.add_row(
                title.split(",")[0],
                name,
                f"{n:,}",
                f"{1e3 * t_guard:.3f}",
                f"{1e3 * t_fwd:.2f}",
                f"{100 * t_guard / t_fwd:.2f}%",
            )
    console.print(table)


if __name__ == "__main__":
    main()

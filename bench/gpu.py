"""GPU mode of the speed benchmarks: the models of issue 9's table, and the full-command epoch time.

    python bench/gpu.py                      # every row, eager fp32, then the full-command epoch
    python bench/gpu.py --compile on --precision bf16 --models KWL-Sandwich-small
    python bench/gpu.py --baseline cc48de5   # also each row's step time against that commit
    python bench/gpu.py --list               # the rows

Without CUDA it prints one line saying so and exits 0 (use bench/step.py on CPUs).

Per model (batch 256, fixed random batch of the dataset's shape, train step = forward + loss +
backward + Adam, exactly `lipcore.train.train_step`): median step ms over --steps steps after
--warmup steps (synchronised per step), images/s, peak GPU memory (torch.cuda.max_memory_allocated)
and GPU busy fraction: the NVML utilisation ("a kernel was running") sampled every 10 ms while
--steps steps run back to back without synchronisation, as training runs. NVML comes from the
optional `nvidia-ml-py` package (`pip install nvidia-ml-py`); without it that column says n/a.

Full command: `python -m lipcore --mode train --model KWL --layer Sandwich --scale small --gamma 1
--loss multimargin --cert_acc --epochs 2` on the real CIFAR-10 JPEGs of ../shared/datasets (the
image-folder route of bench/train.py, held-out split as test set), or on `--data-dir` holding
cifar10 when given; prints epoch 2's train and test seconds (epoch 1 includes warm-up and compile).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lipcore.losses import build_loss
from lipcore.models import build
from lipcore.runtime import flush_denormals
from lipcore.spec import ExperimentSpec
from lipcore.train import train_step

# The rows of issue 9's table: (label, spec fields). CIFAR-100 unless the label says otherwise.
ROWS: dict[str, dict] = {
    "KWL-Sandwich-small": dict(model="KWL", layer="Sandwich", scale="small"),
    "KWL-Orthogon-small": dict(model="KWL", layer="Orthogon", scale="small"),
    "KWL-Aol-small": dict(model="KWL", layer="Aol", scale="small"),
    "KWL-Plain-small": dict(model="KWL", layer="Plain", scale="small"),
    "KWL-Sandwich-medium": dict(model="KWL", layer="Sandwich", scale="medium"),
    "KWL-Sandwich-large": dict(model="KWL", layer="Sandwich", scale="large"),
    "KWL-Orthogon-large": dict(model="KWL", layer="Orthogon", scale="large"),
    "KWL-Aol-large": dict(model="KWL", layer="Aol", scale="large"),
    "Resnet-SLL-small": dict(model="Resnet", layer="SLL", scale="small"),
    "Resnet-SLL-medium": dict(model="Resnet", layer="SLL", scale="medium"),
    "Resnet-SLL-large": dict(model="Resnet", layer="SLL", scale="large"),
    "DNN-Sandwich-small": dict(model="DNN"),
    "KWL-Sandwich-small-64": dict(model="KWL", layer="Sandwich", scale="small", dataset="tiny_imagenet"),
    "KWL-Sandwich-medium-64": dict(model="KWL", layer="Sandwich", scale="medium", dataset="tiny_imagenet"),
    "KWL-Aol-large-64": dict(model="KWL", layer="Aol", scale="large", dataset="tiny_imagenet"),
    "DNN-Sandwich-small-64": dict(model="DNN", dataset="tiny_imagenet"),
}


def loss_of(fields: dict) -> str:
    """The paper trains DNN (forced) and Resnet with xent, KWL with multimargin."""
    return "xent" if fields["model"] in ("DNN", "Resnet") else "multimargin"


class BusySampler:
    """Mean NVML GPU utilisation (percent of time a kernel ran) sampled in a background thread."""

    def __init__(self, index: int) -> None:
        try:
            import pynvml  # nvidia-ml-py
        except ImportError:
            self.nvml = None
            return
        self.nvml = pynvml
        pynvml.nvmlInit()
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.samples: list[int] = []
        self.stop = threading.Event()

    def __enter__(self) -> BusySampler:
        if self.nvml is not None:
            self.samples, self.stop = [], threading.Event()
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.is_set():
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
            time.sleep(0.01)

    def __exit__(self, *exc) -> None:
        if self.nvml is not None:
            self.stop.set()
            self.thread.join()

    def busy(self) -> float | None:
        return statistics.mean(self.samples) / 100.0 if self.nvml is not None and self.samples else None


def measure(label: str, fields: dict, args: argparse.Namespace, dev: torch.device) -> dict:
    base = dict(dataset="cifar100", loss=loss_of(fields), gamma=1.0, train_batch_size=args.batch)
    spec = ExperimentSpec(**{**base, **fields, "compile": args.compile, "precision": args.precision})
    torch.manual_seed(0)
    model = build(spec).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = train_step(model, build_loss(spec), opt, spec, dev)
    x = torch.rand(args.batch, spec.in_channels, spec.img_size, spec.img_size, device=dev)
    y = torch.randint(0, spec.num_classes, (args.batch,), device=dev)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step(x, y)
    torch.cuda.synchronize(dev)
    warm_s = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step(x, y)
        torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t)
    with BusySampler(dev.index or 0) as sampler:
        t = time.perf_counter()
        for _ in range(args.steps):
            step(x, y)
        torch.cuda.synchronize(dev)
        unsynced = (time.perf_counter() - t) / args.steps
    ms = 1e3 * statistics.median(times)
    row = {
        "model": label,
        "step_ms": ms,
        "step_ms_unsynced": 1e3 * unsynced,
        "images_s": args.batch / (ms / 1e3),
        "peak_gib": torch.cuda.max_memory_allocated(dev) / 2**30,
        "busy": sampler.busy(),
        "warmup_s": warm_s,
    }
    del model, opt, step
    torch.cuda.empty_cache()
    return row


def full_command_epoch(args: argparse.Namespace) -> dict:
    """Run the paper's KWL-Sandwich-small command for 2 epochs; epoch 2's seconds."""
    cmd = [
        sys.executable,
        "-m",
        "lipcore",
        "--mode",
        "train",
        "--model",
        "KWL",
        "--layer",
        "Sandwich",
        "--scale",
        "small",
        "--gamma",
        "1",
        "--loss",
        "multimargin",
        "--epochs",
        "2",
        "--cert_acc",
        "--lip-restarts",
        "0",
        "--compile",
        args.compile,
        "--precision",
        args.precision,
    ]
    if args.data_dir:
        cmd += ["--dataset", "cifar10", "--data_dir", args.data_dir]
    else:
        from train import cifar_folder  # bench/train.py: unpacks the shared JPEGs once

        cmd += ["--dataset", "image_folder", "--data_path", str(cifar_folder())]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        subprocess.run(cmd + ["--root_dir", f"{tmp}/runs"], check=True, cwd=Path(__file__).resolve().parents[1])
        wall = time.monotonic() - t0
        metrics = next(Path(tmp).rglob("metrics.json"))
        rows = json.loads(metrics.read_text())
    last = rows[-1]
    return {
        "train_s": last["train_time_s"],
        "test_s": last["test_time_s"],
        "wall_2_epochs_s": wall,
        "test_acc": last.get("test_acc"),
        "cert_acc_36": last.get("cert_acc_36"),
    }


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(ROWS), help="comma-separated labels (see --list)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--compile", default="off", choices=["auto", "on", "off"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--baseline", default=None, help="commit to compare each row's step time with (bench/step.py)")
    ap.add_argument("--data-dir", default=None, help="folder holding cifar10 for the full command")
    ap.add_argument("--no-full", action="store_true", help="skip the full-command epoch")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    return ap


def compare_with_baseline(label: str, args: argparse.Namespace) -> dict:
    """One row's step time at args.baseline against the working tree (bench/step.py's compare)."""
    import step as step_bench  # bench/step.py

    f = {"dataset": "cifar100", **ROWS[label]}
    extra = {k: v for k, v in f.items() if k not in ("model", "layer", "scale", "dataset")}
    ns = argparse.Namespace(
        baseline=args.baseline,
        model=f["model"],
        layer=f.get("layer", "Sandwich"),
        scale=f.get("scale", "small"),
        dataset=f["dataset"],
        loss=loss_of(f),
        batch=args.batch,
        device="cuda",
        rounds=5,
        steps=args.steps // 2 or 1,
        spec_extra=json.dumps(extra),
        threads=0,
        compile_current=False,
    )
    return step_bench.compare(ns)


def main() -> None:
    args = _parser().parse_args()
    if args.list:
        print("\n".join(ROWS))
        return
    if not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here, GPU mode skipped (bench/step.py measures CPUs)")
        return
    flush_denormals()
    dev = torch.device("cuda")
    print(
        f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}, batch {args.batch}, "
        f"compile {args.compile}, {args.precision}",
        flush=True,
    )
    results: dict = {"device": torch.cuda.get_device_name(dev), "rows": [], "compare": {}}
    head = f"{'model':24s} {'step ms':>8s} {'unsync ms':>9s} {'img/s':>8s} {'peak GiB':>8s} {'busy':>5s}"
    print(head)
    for label in args.models.split(","):
        r = measure(label, ROWS[label], args, dev)
        results["rows"].append(r)
        busy = "n/a" if r["busy"] is None else f"{100 * r['busy']:.0f}%"
        print(
            f"{label:24s} {r['step_ms']:8.2f} {r['step_ms_unsynced']:9.2f} {r['images_s']:8.0f} "
            f"{r['peak_gib']:8.2f} {busy:>5s}",
            flush=True,
        )
    for label in args.models.split(",") if args.baseline else []:
        c = results["compare"][label] = compare_with_baseline(label, args)
        print(
            f"{label:24s} baseline {c['baseline_ms']:.2f} ms, current {c['current_ms']:.2f} ms, "
            f"ratio {c['ms_ratio']:.3f}; aten ops {c['baseline_ops']} -> {c['current_ops']}",
            flush=True,
        )
    if not args.no_full:
        full = results["full_command"] = full_command_epoch(args)
        print(
            f"full command, epoch 2: train {full['train_s']:.2f} s, test {full['test_s']:.2f} s "
            f"(2 epochs wall {full['wall_2_epochs_s']:.1f} s; test acc {full['test_acc']}, "
            f"cert@36 {full['cert_acc_36']})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

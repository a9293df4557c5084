"""Inference latency of exported models: onnxruntime (CPU) beside lipcore, batch 1 and 256.

    python bench/export.py [--models Toy-Sandwich,KWL-Sandwich,...] [--threads N] [--min-time 1.0]

For each model: lipcore's eval forward (cached effective weights; circular convolutions by FFT),
the exported standard-operator network run by torch eager (default form), and onnxruntime on the
ONNX file in both forms of the circular convolutions: "dft" (the default: DFT as matrix products,
`lipcore.layers.ops.CircularDFT`) and "conv" (CircularPad2d + Conv2d with the full n x n kernel).
Medians in ms; the ratio column is onnxruntime (dft) over lipcore measured in the same process
(below 1: the export is faster). Random weights: latency does not depend on their values.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lipcore.checkpoint import LoadedModel
from lipcore.export import example_input, standard_model, to_onnx
from lipcore.models import build
from lipcore.spec import ExperimentSpec

MODELS = {
    "Toy-Sandwich": dict(model="Toy", layer="Sandwich", gamma=5.0),
    "KWL-Sandwich": dict(model="KWL", layer="Sandwich", scale="small", gamma=2.0, dataset="cifar10"),
    "KWL-Orthogon": dict(model="KWL", layer="Orthogon", scale="small", gamma=2.0, dataset="cifar10"),
    "KWL-Aol": dict(model="KWL", layer="Aol", scale="small", gamma=2.0, dataset="cifar10"),
    "Resnet-SLL": dict(model="Resnet", layer="SLL", scale="small", gamma=1.0, dataset="cifar10"),
    "DNN-LLN": dict(model="DNN", dataset="cifar100", gamma=1.0),
}


def timed(fn, min_time: float) -> float:
    fn()
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_time).median


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="Toy-Sandwich,KWL-Sandwich,KWL-Orthogon,KWL-Aol")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--min-time", type=float, default=1.0)
    p.add_argument("--batches", default="1,256")
    args = p.parse_args()
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    print(f"threads {args.threads}, torch {torch.__version__}, onnxruntime {ort.__version__}")
    print(
        f"{'model':14} {'batch':>5} {'lipcore ms':>11} {'export/torch ms':>16} {'ort dft ms':>11} {'ort conv ms':>12} {'ort/lipcore':>12}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            spec = ExperimentSpec(**MODELS[name])
            torch.manual_seed(0)
            info = spec.dataset_info
            loaded = LoadedModel(build(spec).eval(), spec, [], info.mean, info.std)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                path = to_onnx(loaded, Path(tmp) / f"{name}.onnx")
                export_s = time.perf_counter() - t0
                conv_path = to_onnx(loaded, Path(tmp) / f"{name}-conv.onnx", circular="conv")
            net = standard_model(loaded)
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            conv_session = ort.InferenceSession(str(conv_path), opts, providers=["CPUExecutionProvider"])
            for batch in (int(b) for b in args.batches.split(",")):
                x = torch.rand_like(example_input(loaded, batch))
                xn = x.numpy()
                with torch.no_grad():
                    t_lip = timed(lambda: loaded.model(x), args.min_time)
                    t_std = timed(lambda: net(x), args.min_time)
                t_ort = timed(lambda: session.run(None, {"x": xn}), args.min_time)
                t_conv = timed(lambda: conv_session.run(None, {"x": xn}), args.min_time)
                print(
                    f"{name:14} {batch:5d} {1e3 * t_lip:11.3f} {1e3 * t_std:16.3f} {1e3 * t_ort:11.3f} "
                    f"{1e3 * t_conv:12.3f} {t_ort / t_lip:12.2f}",
                    flush=True,
                )
            print(
                f"{'':14} export {export_s:.1f} s, ONNX file {path.stat().st_size / 2**20:.1f} MiB "
                f"(conv form {conv_path.stat().st_size / 2**20:.1f} MiB)"
            )


if __name__ == "__main__":
    main()

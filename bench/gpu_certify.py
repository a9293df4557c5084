"""Certificates on a GPU against the same certificates on the CPU: same model, same inputs.

    python bench/gpu_certify.py [--n 256] [--json out.json]

For each model of the list below (the image classifiers' layer families, Resnet-SLL, the DNN with its LLN head; the
weights moved off their initialisation by a few Adam steps so no factor is at its special start),
certifies the same inputs with `lipcore.certify.certify_model` on the CPU and on CUDA, and prints:
the verified bound on each device, the largest logit difference (relative to the largest logit),
the largest radius difference (model-input space, relative to the radius), how many predictions
differ, and the time per input of each. The certifying forward is float64 on both devices
(lipcore.certify), so the differences are float64 rounding of different kernels (FFTs, reductions),
~1e-13 relative; a certificate whose difference is larger than 1e-9 relative is reported as FAIL.
It is run a second time on CUDA with TF32 and the 'high' matmul precision switched on globally, as
a training run leaves them: certificates must not change (full_precision() guards them).
Without CUDA it prints one line saying so and exits 0.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lipcore.certify import certify_model
from lipcore.losses import build_loss
from lipcore.models import build
from lipcore.spec import ExperimentSpec

MODELS: dict[str, dict] = {
    "KWL-Sandwich-small": dict(model="KWL", layer="Sandwich", scale="small", dataset="cifar10"),
    "KWL-Orthogon-small": dict(model="KWL", layer="Orthogon", scale="small", dataset="cifar10"),
    "KWL-Aol-small": dict(model="KWL", layer="Aol", scale="small", dataset="cifar10"),
    "Resnet-SLL-small-LLN": dict(model="Resnet", layer="SLL", scale="small", dataset="cifar100", lln=True),
    "Resnet-SLL-small": dict(model="Resnet", layer="SLL", scale="small", dataset="cifar100"),
    "DNN-Sandwich-LLN-64": dict(model="DNN", dataset="tiny_imagenet"),
}
TOLERANCE = 1e-9  # relative; float64 kernels on two devices agree to ~1e-13


def perturbed_model(fields: dict) -> tuple[torch.nn.Module, ExperimentSpec]:
    spec = ExperimentSpec(**fields, gamma=1.0, train_batch_size=16)
    torch.manual_seed(0)
    model = build(spec)
    loss = build_loss(spec)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    shape = (16, spec.in_channels, spec.img_size, spec.img_size)
    for _ in range(3):
        x = torch.rand(shape)
        y = torch.randint(0, spec.num_classes, (16,))
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
    return model.eval(), spec


def timed(model: torch.nn.Module, x: torch.Tensor):
    def sync() -> None:
        if x.is_cuda:
            torch.cuda.synchronize(x.device)

    certify_model(model, x[:2])  # float64 copy built and cached, kernels warmed
    sync()
    t = time.perf_counter()
    out = certify_model(model, x)
    sync()
    return out, (time.perf_counter() - t) / len(x)


def certify_with_tf32(model: torch.nn.Module, x: torch.Tensor, dev: torch.device):
    """certify_model on `dev` with TF32 and the 'high' matmul precision on, as a training run leaves them."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    try:
        return certify_model(copy.deepcopy(model).to(dev), x.to(dev))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")


def compare(label: str, fields: dict, n: int, dev: torch.device) -> dict:
    """One model's certificates of the same n inputs on the CPU, on `dev`, and on `dev` with TF32 on."""
    model, spec = perturbed_model(fields)
    torch.manual_seed(1)
    x = torch.rand(n, spec.in_channels, spec.img_size, spec.img_size)
    (c_cpu, l_cpu, b_cpu), t_cpu = timed(model, x)
    gpu_model = copy.deepcopy(model).to(dev)
    (c_gpu, l_gpu, b_gpu), t_gpu = timed(gpu_model, x.to(dev))
    c_tf32, _, b_tf32 = certify_with_tf32(model, x, dev)
    r_cpu, r_gpu = c_cpu.radius, c_gpu.radius.cpu()
    row = {
        "model": label,
        "verified_cpu": b_cpu.verified,
        "verified_gpu": b_gpu.verified,
        "verified_rel": abs(b_gpu.verified - b_cpu.verified) / b_cpu.verified,
        "logit_rel": float((l_gpu.cpu() - l_cpu).abs().max() / l_cpu.abs().max()),
        "radius_abs": float((r_gpu - r_cpu).abs().max()),
        "radius_rel": float(((r_gpu - r_cpu).abs() / r_cpu.abs().clamp_min(1e-300)).max()),
        "predicted_differ": int((c_gpu.predicted.cpu() != c_cpu.predicted).sum()),
        "tf32_on_same": bool(torch.equal(c_tf32.radius, c_gpu.radius)) and b_tf32 == b_gpu,
        "us_per_input_cpu": 1e6 * t_cpu,
        "us_per_input_gpu": 1e6 * t_gpu,
    }
    row["ok"] = (
        row["verified_rel"] <= TOLERANCE
        and row["logit_rel"] <= TOLERANCE
        and row["radius_rel"] <= TOLERANCE
        and row["predicted_differ"] == 0
        and row["tf32_on_same"]
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="inputs per model")
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda", help="the device compared with the CPU (cpu: a dry run of this script)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("bench/gpu_certify.py: no CUDA device here, nothing to compare")
        return
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (dry run)"
    print(f"{name}, torch {torch.__version__}, {args.n} inputs per model", flush=True)
    rows = []
    for label, fields in MODELS.items():
        row = compare(label, fields, args.n, dev)
        rows.append(row)
        print(
            f"{label:28s} verified cpu {row['verified_cpu']:.15f} gpu {row['verified_gpu']:.15f} | "
            f"logits rel {row['logit_rel']:.1e} | radius rel {row['radius_rel']:.1e} abs {row['radius_abs']:.1e} | "
            f"pred differ {row['predicted_differ']} | tf32-on same {row['tf32_on_same']} | "
            f"us/input cpu {row['us_per_input_cpu']:.0f} gpu {row['us_per_input_gpu']:.0f} | "
            f"{'ok' if row['ok'] else 'FAIL'}",
            flush=True,
        )
    failed = sum(not r["ok"] for r in rows)
    print(f"{len(rows) - failed} of {len(rows)} models: GPU certificates equal the CPU's within {TOLERANCE:g} relative")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

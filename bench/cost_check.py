"""lipcore.cost's memory estimate against the measured peak of real training steps on this CPU.

For each spec a fresh process imports torch, notes its resident memory, builds the model, and runs
three Adam training steps (forward, backward, step) on a random batch of the spec's train_batch_size;
the peak resident memory above the baseline is compared with the estimate (without the dataset,
which is not loaded here). Prints one line per spec: estimate, measured, ratio.

    python bench/cost_check.py
"""

from __future__ import annotations

import json
import subprocess
import sys

SPECS = [
    {"model": "KWL", "layer": "Sandwich", "scale": "small", "dataset": "cifar10", "train_batch_size": 256},
    {"model": "KWL", "layer": "Aol", "scale": "medium", "dataset": "cifar10", "train_batch_size": 128},
    {"model": "DNN", "dataset": "cifar10", "train_batch_size": 256},
    {"model": "Resnet", "scale": "small", "dataset": "cifar10", "train_batch_size": 32},
]

CHILD = r"""
import json, resource, sys
import torch
import torch.nn.functional as F
from lipcore.models import build
from lipcore.spec import ExperimentSpec
torch.manual_seed(0)
spec = ExperimentSpec.model_validate(json.loads(sys.argv[1]))
def rss_peak():  # bytes (ru_maxrss is KiB on Linux)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
x = torch.randn(spec.train_batch_size, spec.in_channels, spec.img_size, spec.img_size)
y = torch.randint(0, spec.num_classes, (spec.train_batch_size,))
base = rss_peak()
model = build(spec).train()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for _ in range(3):
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()
print(json.dumps({"peak": rss_peak() - base}))
"""


def main() -> None:
    from lipcore.cost import estimate_memory
    from lipcore.spec import ExperimentSpec

    print(f"{'spec':58s} {'estimate':>10s} {'measured':>10s} {'ratio':>6s}")
    for raw in SPECS:
        spec = ExperimentSpec.model_validate(raw)
        est = estimate_memory(spec)
        without_data = est.total_bytes - est.data_bytes
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(raw)], capture_output=True, text=True, check=True)
        peak = json.loads(out.stdout.strip().splitlines()[-1])["peak"]
        name = f"{spec.model}-{spec.layer}-{spec.scale} {spec.dataset} batch {spec.train_batch_size}"
        print(f"{name:58s} {without_data / 2**20:8.0f}MB {peak / 2**20:8.0f}MB {without_data / peak:6.2f}")


if __name__ == "__main__":
    main()

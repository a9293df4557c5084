"""How much memory training a spec needs, estimated from the spec alone (no data, no real weights).

The network is built on torch's `meta` device (shapes only, no storage, well under a second for the
largest Resnet) and run forward once under `torch.autograd.graph.saved_tensors_hooks`, which sees
every tensor autograd keeps for the backward pass -- the activations, the part that grows with the
batch. Two forwards (batch 1 and 2) separate the per-sample part from the batch-independent part
(e.g. weights a layer derives from its parameters). Then, in bytes, float32 throughout:

    params + grads + Adam's two moments           16 * n_params
  + saved for backward, at train_batch_size       fixed + per_sample * train_batch_size
  + backward's transient gradients                ~ BACKWARD_FACTOR x the saved activations
  + the uint8 dataset held on the device          (known datasets only)

Checked against the measured peak of real training steps on CPU by bench/cost_check.py (README).
Used by the service to refuse specs that cannot fit a worker; the estimate is an approximation
(allocator slack, kernels' workspaces), not a bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from lipcore.spec import ExperimentSpec

BYTES = 4  # float32
# The backward pass holds gradients of activations alongside the saved ones. With 0.5, estimates
# were 0.79-1.08x the measured CPU peak of KWL/DNN/Resnet training steps (bench/cost_check.py).
BACKWARD_FACTOR = 0.5
IMAGES = {"cifar10": 60_000, "cifar100": 60_000, "tiny_imagenet": 110_000}  # train + test


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training job of a spec needs (see the module doc for the parts)."""

    n_params: int
    state_bytes: int  # parameters, gradients, Adam moments
    activation_bytes: int  # saved for backward at the training batch size, plus backward transients
    data_bytes: int  # the dataset on the device (0 when unknown, e.g. image folders)

    @property
    def total_bytes(self) -> int:
        return self.state_bytes + self.activation_bytes + self.data_bytes

    def describe(self) -> str:
        def gib(b: int) -> str:
            return f"{b / 2**30:.2f} GiB"

        return (
            f"{gib(self.total_bytes)} ({self.n_params:,} parameters with gradients and Adam state "
            f"{gib(self.state_bytes)}, activations {gib(self.activation_bytes)}, data {gib(self.data_bytes)})"
        )


def _saved_bytes(spec: ExperimentSpec, batch: int) -> tuple[int, int]:
    """(n_params, bytes autograd saves for backward) of one training forward at `batch`, on meta."""
    from lipcore.models import build

    with torch.device("meta"):
        model = build(spec)
    model.train()
    # Counted per storage (views of one tensor share it; meta storages have identities but no data)
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, torch.Tensor] = {}  # keeps each storage alive while counting, so keys stay unique

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage()._cdata
        if key not in params:
            seen.setdefault(key, t)
        return t

    shape = (batch, spec.in_channels or 1) + ((spec.img_size,) * 2 if spec.img_size else ())
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.empty(shape, device="meta"))
    saved = sum(t.untyped_storage().nbytes() for t in seen.values())
    return sum(p.numel() for p in model.parameters()), saved


@lru_cache(maxsize=256)
def _per_sample(spec_json: str) -> tuple[int, int, int]:
    spec = ExperimentSpec.from_json(spec_json)
    n_params, one = _saved_bytes(spec, 1)
    _, two = _saved_bytes(spec, 2)
    per_sample = max(two - one, 0)
    return n_params, max(one - per_sample, 0), per_sample


def estimate_memory(spec: ExperimentSpec) -> MemoryEstimate:
    """Peak memory (bytes) of training `spec`; the spec must be resolved (input shape known).

    Cached per model-shaping part of the spec, so asking twice costs nothing.
    """
    if not spec.resolved:
        raise ValueError("the spec's input shape is not known yet (resolve image folders first)")
    shaping = spec.model_copy(update={"epochs": 1, "seed": 0, "lr": 0.01, "train_batch_size": 1, "test_batch_size": 1})
    n_params, fixed, per_sample = _per_sample(shaping.to_json())
    saved = fixed + per_sample * spec.train_batch_size
    # evaluation runs without autograd at test_batch_size: a few live activations per sample at most
    evaluation = per_sample * spec.test_batch_size // 4
    activations = max(int(saved * (1 + BACKWARD_FACTOR)), evaluation)
    data = IMAGES.get(spec.dataset, 0) * (spec.in_channels or 1) * (spec.img_size or 0) ** 2
    return MemoryEstimate(n_params, 4 * BYTES * n_params, activations, data)

"""Devices, seeding and RNG state: what makes a run reproducible and resumable on CPU or GPU."""

from __future__ import annotations

import os

import torch
from torch import Tensor


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None) -> cuda when available, else cpu; anything else is passed to torch.device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def seed_everything(seed: int) -> None:
    """Seed torch's CPU and CUDA generators (lipcore draws no numpy or `random` numbers)."""
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def rng_state() -> dict[str, Tensor]:
    """Every global generator state a training step may draw from, as uint8 tensors."""
    state = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda_{i}"] = s
    return state


def set_rng_state(state: dict[str, Tensor]) -> None:
    """Restore `rng_state()`; CUDA states are restored where the devices exist."""
    torch.set_rng_state(state["torch_cpu"].cpu())
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"cuda_{i}" in state:
                torch.cuda.set_rng_state(state[f"cuda_{i}"].cpu(), i)


def flush_denormals() -> None:
    """Flush subnormal floats to zero on the CPU, process-wide.

    Deep Lipschitz networks at initialisation shrink their activations into the subnormal range,
    where CPU kernels slow down several-fold (measured: the Toy model's Lipschitz estimate took
    2.2 s instead of 0.4 s). The values flushed are below 1.2e-38 (float32), far below anything a
    margin or a certificate could depend on. No effect on GPUs.
    """
    torch.set_flush_denormal(True)


# ---- intra-op threads (issue 18) ------------------------------------------------------------
THREADS_ENV = "LBDN_TORCH_THREADS"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def torch_threads(sharing: int = 1) -> int:
    """The intra-op threads of one torch process among `sharing` processes that compute at once.

    LBDN_TORCH_THREADS wins, then OMP_NUM_THREADS (a user who set it meant it), else usable cores
    // sharing, at least 1. Never more threads than cores: torch's OpenMP threads spin-wait for a
    core another process holds, and on a 2-core machine with one busy process beside it a Toy epoch
    took ~3 s with 2 threads against ~0.3 s with 1 (README "Configuration").
    """
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return max(1, usable_cores() // max(1, sharing))


def set_torch_threads(threads: int) -> int:
    """Set this process's intra-op threads (call once, before any torch work); returns them."""
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()

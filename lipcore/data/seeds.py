"""Seeds for the data's private random streams, derived from the experiment seed by hashing.

Hashing (seed, purpose, ...) keeps each stream independent of the others and of the global RNG
stream that `torch.manual_seed(spec.seed)` starts for model initialisation, and stays the same
across library versions (unlike, say, numpy's Generator methods).
"""

from __future__ import annotations

import hashlib

import torch


def derived_seed(seed: int, purpose: str, *more: int) -> int:
    """A 63-bit seed for `purpose`, a pure function of its arguments."""
    text = ":".join(["lbdn", purpose, str(int(seed)), *(str(int(m)) for m in more)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def generator(seed: int, purpose: str, *more: int) -> torch.Generator:
    """A fresh CPU `torch.Generator` seeded with `derived_seed(seed, purpose, *more)`."""
    g = torch.Generator(device="cpu")
    g.manual_seed(derived_seed(seed, purpose, *more))
    return g

"""Full float32/float64 arithmetic for certificates: no TF32, no autocast, on any device.

Certified radii are only as good as the logits they come from, so certification and empirical
Lipschitz estimates run inside `full_precision()`. The switches are process-global in PyTorch; a
reentrant counter keeps them on until the last concurrent user (e.g. API threads) leaves.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_lock = threading.Lock()
_depth = 0
_saved: tuple[bool, bool, str] | None = None


@contextmanager
def full_precision() -> Iterator[None]:
    """Disable TF32 (matmul and cuDNN) and autocast inside the block."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = (
                torch.backends.cuda.matmul.allow_tf32,
                torch.backends.cudnn.allow_tf32,
                torch.get_float32_matmul_precision(),
            )
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            torch.set_float32_matmul_precision("highest")
        _depth += 1
    try:
        with torch.autocast("cpu", enabled=False):
            if torch.cuda.is_available():
                with torch.autocast("cuda", enabled=False):
                    yield
            else:
                yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                matmul, cudnn, precision = _saved
                torch.backends.cuda.matmul.allow_tf32 = matmul
                torch.backends.cudnn.allow_tf32 = cudnn
                torch.set_float32_matmul_precision(precision)
                _saved = None

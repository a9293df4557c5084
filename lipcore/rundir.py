"""The layout of a run directory and the atomic writes that keep it consistent after a crash.

{root_dir}_seed{seed}/{dataset}/{model}-{layer}-{scale}[-LLN]-gamma{g:.1f}/
    spec.json               the resolved ExperimentSpec
    log.txt                 human-readable log, appended across resumptions
    metrics.json            one object per finished epoch
    checkpoint.safetensors  resumable training state
    model.safetensors       final weights (+ spec, classes, normalisation)
    summary.json            final metrics and the empirical Lipschitz bound
    eval.json / eval_toy.json   results of --mode eval
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SPEC = "spec.json"
LOG = "log.txt"
METRICS = "metrics.json"
CHECKPOINT = "checkpoint.safetensors"
MODEL = "model.safetensors"
SUMMARY = "summary.json"
EVAL = "eval.json"
EVAL_TOY = "eval_toy.json"


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON via a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


class RunLog:
    """Append timestamped lines to log.txt and pass them on to a hook (terminal, worker events)."""

    def __init__(self, path: str | Path, hook: Callable[[str], None] | None = None) -> None:
        self.path, self.hook = Path(path), hook

    def __call__(self, msg: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self.path.open("a") as f:
            f.write(f"[{stamp}] {msg}\n")
        if self.hook is not None:
            self.hook(msg)

"""What an evaluation has finished: one small file per (eps, batch of inputs) with the batch's
per-input verdict (still correct after the attack), so an evaluation run again, here or on another
host given the files, attacks only the batches without one.

Not AutoAttack's own state file (pyautoattack's `state_path`): its resume raises on every restored
file (the attack set comes back from JSON as a list and never equals the set it is compared with),
and a restored run returns the clean input for every input broken before the restart, which would
count those as robust. The verdict is all the evaluation needs of a finished batch.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor


def batch_file(folder: str | Path, eps: float, start: int) -> Path:
    """The file of the batch of inputs from `start` at eps `eps` (1/255 units)."""
    return Path(folder) / f"autoattack{eps:g}-{start}.json"


def is_batch_file(name: str) -> bool:
    """A name batch_file gives (a file of the folder itself, not of a subfolder)."""
    return name.startswith("autoattack") and name.endswith(".json") and "/" not in name


def save_batch(path: Path, robust: Tensor, attacks: Sequence[str]) -> None:
    """The batch's verdicts, whole or not at all (written under a temporary name, then renamed)."""
    body = json.dumps({"attacks": list(attacks), "robust": [bool(v) for v in robust.tolist()]})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(body)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_batch(path: Path, n: int, attacks: Sequence[str], device: torch.device) -> Tensor | None:
    """The verdicts saved for this batch, or None when there are none for these `n` inputs and attacks."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if saved.get("attacks") != list(attacks) or len(saved.get("robust", ())) != n:
        return None
    return torch.tensor(saved["robust"], dtype=torch.bool, device=device)

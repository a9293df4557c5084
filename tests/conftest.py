"""Shared test settings: deterministic torch on the CPU, paths to the shared reference data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED = Path(os.environ.get("LBDN_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
VECTORS = SHARED / "vectors"
CIFAR_JPEG_ARCHIVE = SHARED / "datasets" / "cifar10-jpeg-train.tar.gz"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)

"""The paper's architectures have exactly the reference parameter counts (all 52 rows)."""

from __future__ import annotations

import json

import pytest
import torch

from lipcore.models import build
from lipcore.spec import ExperimentSpec
from tests.conftest import VECTORS

ROWS = json.loads((VECTORS / "reference_param_counts.json").read_text())["rows"]


def test_fifty_two_rows() -> None:
    assert len(ROWS) == 52


@pytest.mark.parametrize(
    "row", ROWS, ids=lambda r: f"{r['model']}-{r['layer']}-{r['scale']}-{r['dataset']}{'-LLN' if r['lln'] else ''}"
)
def test_trainable_parameter_count(row: dict) -> None:
    spec = ExperimentSpec(
        model=row["model"], layer=row["layer"], scale=row["scale"], dataset=row["dataset"], lln=row["lln"]
    )
    with torch.device("meta"):  # shapes only: the 472M-parameter Resnet costs no memory
        model = build(spec)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == row["params"]


def test_every_parameter_exists_after_init() -> None:
    """An optimizer built right after the model sees all parameters (no lazy alphas)."""
    spec = ExperimentSpec(model="KWL", layer="Sandwich", scale="small", dataset="cifar10")
    model = build(spec)
    names = {n for n, _ in model.named_parameters()}
    n_before = sum(p.numel() for p in model.parameters())
    model(torch.rand(2, 3, 32, 32))
    assert {n for n, _ in model.named_parameters()} == names
    assert sum(p.numel() for p in model.parameters()) == n_before
    assert any(n.endswith("alpha") for n in names)
    assert len(list(model.buffers())) == 0

"""AutoAttack evaluation of a small trained model on the CPU: clean >= attacked >= certified."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lipcore.evaluate import attacks_for, evaluate_robustness
from lipcore.rundir import MODEL
from lipcore.spec import ExperimentSpec
from lipcore.train import train


def write_colours(root: Path, per_class: int = 48) -> None:
    """Three classes of noisy solid-colour 32x32 images: easy to learn, with real margins."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 8)):
        for c, colour in enumerate(([200, 40, 40], [40, 200, 40], [40, 40, 200])):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    data = tmp_path_factory.mktemp("data")
    write_colours(data / "colours")
    spec = ExperimentSpec(
        model="KWL",
        layer="Sandwich",
        scale="small",
        gamma=1.0,
        dataset="image_folder",
        data_path="colours",
        loss="multimargin",
        epochs=5,
        train_batch_size=24,
        lr=0.01,
    )
    run = train(spec, tmp_path_factory.mktemp("run"), data_dir=data, lipschitz_restarts=0)
    assert run.metrics[-1]["test_acc"] >= 90.0
    return run.run_dir / MODEL, data


@pytest.mark.slow  # seconds to a minute each on 2 cores: make test runs it, make test-fast not
def test_autoattack_accuracy_is_bracketed_by_clean_and_certified(trained) -> None:
    model_path, data = trained
    seen = []
    result = evaluate_robustness(
        model_path,
        data_dir=data,
        eps=(36,),
        version="custom",
        attacks=["apgd-ce"],
        n_examples=6,
        device="cpu",
        batch_size=6,
        on_progress=seen.append,
    )
    assert result["n"] == 6 and result["version"] == "custom" and result["attacks"] == ["apgd-ce"]
    assert result["clean_acc"] >= 90.0
    assert result["certified_acc"]["36"] <= result["autoattack_acc"]["36"] <= result["clean_acc"]
    assert result["certificate_violations"]["36"] == 0
    assert result["certified_acc"]["36"] > 0
    assert [(p.epoch, p.step, p.steps, p.total_steps) for p in seen] == [(1, 1, 1, 1)]
    assert result["units"].startswith("l2")


def test_standard_version_falls_back_below_ten_classes() -> None:
    assert attacks_for("standard", 3) == ("custom", ["apgd-ce", "square"])
    assert attacks_for("standard", 10) == ("standard", None)
    with pytest.raises(ValueError, match="needs a list of attacks"):
        attacks_for("custom", 10)

"""ExperimentSpec: the paper's defaults and resolution rules, and clear errors for nonsense."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lipcore.spec import ExperimentSpec


def test_paper_defaults() -> None:
    s = ExperimentSpec()
    assert (s.model, s.layer, s.scale, s.dataset, s.gamma, s.loss) == (
        "Resnet",
        "SLL",
        "xlarge",
        "tiny_imagenet",
        1.0,
        "xent",
    )
    assert (s.epochs, s.seed, s.lr, s.train_batch_size, s.test_batch_size) == (100, 123, 0.01, 256, 256)
    assert s.offset == 1.5 and (s.in_channels, s.img_size, s.num_classes) == (3, 64, 200)


def test_resolution_rules() -> None:
    dnn = ExperimentSpec(model="DNN", dataset="cifar100")
    assert (dnn.layer, dnn.scale, dnn.lln, dnn.normalized, dnn.loss) == ("Sandwich", "small", True, False, "xent")
    plain = ExperimentSpec(model="KWL", layer="Plain", gamma=10.0, dataset="cifar10", loss="multimargin")
    assert plain.gamma is None and plain.offset is None
    toy = ExperimentSpec(model="Toy", layer="Sandwich", gamma=5)
    assert (toy.dataset, toy.loss, toy.train_batch_size, toy.test_batch_size) == ("square_wave", "mse", 50, 200)
    assert (toy.in_channels, toy.num_classes) == (1, 1)
    kwl = ExperimentSpec(model="KWL", dataset="cifar10")
    assert (kwl.layer, kwl.scale) == ("Plain", "small")
    assert ExperimentSpec(model="KWL", layer="Aol", dataset="cifar100", LLN=False).num_classes == 100


def test_run_directory_naming() -> None:
    s = ExperimentSpec(
        model="KWL", layer="Sandwich", scale="small", gamma=100, dataset="cifar10", loss="multimargin", seed=7
    )
    assert s.train_dir("./saved_models") == "./saved_models_seed7/cifar10/KWL-Sandwich-small-gamma100.0"
    d = ExperimentSpec(model="DNN", gamma=1, dataset="tiny_imagenet")
    assert d.train_dir("runs") == "runs_seed123/tiny_imagenet/DNN-Sandwich-small-LLN-gamma1.0"
    p = ExperimentSpec(model="KWL", layer="Plain", dataset="cifar10")
    assert p.train_dir("r") == "r_seed123/cifar10/KWL-Plain-small"


@pytest.mark.parametrize(
    "kwargs, field_or_message",
    [
        (dict(model="KWL", layer="SLL", dataset="cifar10"), "layer 'SLL' is not defined for model KWL"),
        (dict(model="Resnet", layer="Sandwich", dataset="cifar10"), "layer 'Sandwich' is not defined for model Resnet"),
        (dict(model="Toy", layer="Sandwich", dataset="cifar10"), "needs dataset 'square_wave'"),
        (dict(model="KWL", layer="Aol", dataset="square_wave"), "needs model Toy"),
        (dict(model="KWL", layer="Aol", gamma=0, dataset="cifar10"), "gamma"),
        (dict(model="KWL", layer="Aol", gamma=-1, dataset="cifar10"), "gamma"),
        (dict(model="KWL", layer="Aol", gamma=float("inf"), dataset="cifar10"), "gamma"),
        (
            dict(model="KWL", layer="Aol", scale="xlarge", dataset="cifar10"),
            "scale 'xlarge' is not defined for model KWL",
        ),
        (dict(model="DNN", loss="multimargin", dataset="cifar10"), "model DNN requires loss='xent'"),
        (dict(model="DNN", lln=False, dataset="cifar10"), "model DNN requires lln=True"),
        (
            dict(model="KWL", layer="Sandwich", lln=True, dataset="cifar10"),
            "lln (last-layer normalisation) is defined for models DNN and Resnet",
        ),
        (dict(model="KWL", layer="Plain", cert_acc=True, dataset="cifar10"), "cert_acc needs a Lipschitz bound"),
        (dict(model="KWL", layer="Aol", dataset="mnist"), "dataset 'mnist' is unknown"),
        (dict(model="KWL", layer="Aol", dataset="image_folder"), "needs data_path"),
        (dict(model="KWL", layer="Aol", dataset="cifar10", num_classes=5), "contradicts dataset"),
        (dict(model="KWL", layer="Aol", dataset="cifar10", loss="mse"), "loss 'mse' is for the Toy regression"),
        (dict(model="KWL", layer="Aol", dataset="cifar10", epochs=0), "epochs"),
        (dict(model="KWL", layer="Aol", dataset="cifar10", lr=0), "lr"),
        (dict(model="KWL", layer="Aol", dataset="cifar10", colour="red"), "colour"),
        (dict(model="VGG", dataset="cifar10"), "model"),
    ],
)
def test_nonsense_is_rejected_with_a_clear_message(kwargs, field_or_message) -> None:
    with pytest.raises(ValidationError) as err:
        ExperimentSpec(**kwargs)
    assert field_or_message in str(err.value)


def test_json_round_trip_is_identity() -> None:
    s = ExperimentSpec(model="DNN", gamma=2.5, dataset="cifar100", cert_acc=True, seed=13)
    assert ExperimentSpec.from_json(s.to_json()) == s
    again = ExperimentSpec.model_validate(s.model_dump())
    assert again == s


def test_spec_import_does_not_need_torch() -> None:
    import subprocess
    import sys

    code = "import sys, lipcore.spec; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_cards_only_dataset_is_its_default_on_both_command_lines() -> None:
    """`lbdn submit --model Toy` (and `python -m lipcore -m Toy`) need no --dataset: the Toy has one."""
    import argparse

    from client.flags import add_spec_flags, spec_fields
    from lipcore.cli import parser as paper_parser
    from lipcore.cli import spec_from_args

    p = argparse.ArgumentParser()
    add_spec_flags(p)
    fields = spec_fields(p.parse_args(["--model", "Toy"]))
    assert "dataset" not in fields  # the flag's default is "not given", not another model's dataset
    assert ExperimentSpec(**fields).dataset == "square_wave"
    assert spec_from_args(paper_parser().parse_args(["--model", "Toy"])).dataset == "square_wave"

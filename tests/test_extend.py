"""Extending lipcore from one file: a model, a dataset and a spec field defined only here (no edit to
lipcore, the service or the client) pass through the library (spec, build, data, certificate), the
paper's command line, `lbdn submit`'s flags and the API's validation of a training request.

Each is one module's code plus one registration, as README's "Extending lipcore" shows:
- the spec field `blob_width`: a `SpecField` record, `register_field`;
- the dataset `blobs`: a `DatasetCard` record and its reader, `register_loader("blobs")`;
- the model `Blob`: a `ModelCard` record and its builder, `register_model("Blob")`.
A plug-in module would register at import (as decorators); here the registrations run in a fixture
over copies of the registries, so that the rest of the test session never sees `blob_width` in
its specs.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import numpy as np
import pytest
import torch
from pydantic import Field, ValidationError
from torch import nn

from lipcore.catalog import DatasetCard, ModelCard, get_family, register_card, register_dataset
from lipcore.catalog import dataset_cards as datasets_module
from lipcore.catalog import fields as fields_module
from lipcore.catalog import model_cards as models_module
from lipcore.catalog.fields import SpecField
from lipcore.certify import verified_bound
from lipcore.data import load_data, register_loader
from lipcore.data import loaders as loaders_module
from lipcore.data.arrays import ImageArrays
from lipcore.models import LipschitzNet, build, register_model
from lipcore.models import registry as registry_module
from lipcore.spec import ExperimentSpec, register_field

# ---- a spec field ------------------------------------------------------------------------------------
BLOB_WIDTH = SpecField("blob_width", Annotated[int, Field(ge=1, le=64)], 8, "hidden width of the Blob model")

# ---- a dataset: two classes of 32x32 images, dark and bright blobs -----------------------------------
BLOBS = DatasetCard("blobs", "image", 3, 32, 2, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), about="tests/test_extend.py")


def load_blobs(spec: ExperimentSpec, data_dir: Path) -> ImageArrays:
    """40 train / 10 test images, label 1 for bright ones (deterministic in the spec's seed)."""
    rng = np.random.default_rng(spec.seed)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        x = rng.integers(0, 128, (n, 3, 32, 32)) + 127 * y[:, None, None, None]
        return x.astype(np.uint8), y.astype(np.int64)

    (x, y), (xt, yt) = split(40), split(10)
    return ImageArrays(x, y, xt, yt, ["dark", "bright"])


# ---- a model: flatten, one hidden FC layer of `blob_width` units, a linear read-out ------------------
BLOB = ModelCard(
    "Blob",
    task="classifier",
    inputs="image",
    scales=("small",),
    default_layer="Sandwich",
    default_scale="small",
    needs=frozenset({"fc", "lin"}),
    default_dataset="blobs",
    about="a two-layer test network",
)


class Blob(LipschitzNet):
    """(b, c, s, s) -> (b, classes) logits, bounded by gamma for a bounded family."""

    def __init__(self, spec: ExperimentSpec) -> None:
        family = get_family(spec.layer or "Sandwich")
        super().__init__(spec.gamma if family.bounded else None)
        width, inputs = spec.blob_width, (spec.in_channels or 3) * (spec.img_size or 32) ** 2
        fc, lin = family.constructor("fc"), family.constructor("lin")
        self.body = nn.Sequential(
            nn.Flatten(), fc(inputs, width, scale=self.sqrt_gamma), lin(width, spec.num_classes, scale=self.sqrt_gamma)
        )


def blob(spec: ExperimentSpec) -> Blob:
    return Blob(spec)


REGISTRIES = [
    fields_module.FIELDS,
    datasets_module.DATASETS,
    loaders_module.READERS,
    models_module.CARDS,
    registry_module.BUILDERS,
]


@pytest.fixture(scope="module", autouse=True)
def registered() -> Iterator[None]:
    """The five registrations, into copies of the registries that are put back afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        for registry in REGISTRIES:
            mp.setattr(registry, "entries", dict(registry.entries))
        register_field(BLOB_WIDTH)
        register_dataset(BLOBS)
        register_loader("blobs")(load_blobs)
        register_card(BLOB)
        register_model("Blob")(blob)
        yield


# ---- the library ---------------------------------------------------------------------------------------
def test_the_spec_takes_the_new_model_dataset_and_field() -> None:
    spec = ExperimentSpec(model="Blob", blob_width=4, gamma=2.0)
    assert (spec.dataset, spec.layer, spec.in_channels, spec.img_size, spec.num_classes) == (
        "blobs",
        "Sandwich",
        3,
        32,
        2,
    )
    assert spec.blob_width == 4 and ExperimentSpec(model="Blob").blob_width == 8
    assert ExperimentSpec.from_json(spec.to_json()) == spec and spec.model_dump()["blob_width"] == 4
    assert spec.dataset_info is not None and spec.dataset_info.mean == (0.5, 0.5, 0.5)
    schema = ExperimentSpec.model_json_schema()
    assert schema["properties"]["blob_width"]["maximum"] == 64 and "Blob" in schema["properties"]["model"]["enum"]
    assert "blobs" in schema["properties"]["dataset"]["enum"] and schema["additionalProperties"] is False
    # the paper's models take the new field and dataset by their cards' rules
    assert ExperimentSpec(model="KWL", dataset="blobs").blob_width == 8
    with pytest.raises(ValidationError, match="dataset 'blobs' is 1-D|model Toy is"):
        ExperimentSpec(model="Toy", dataset="blobs")


def test_the_new_field_is_validated_by_its_record() -> None:
    with pytest.raises(ValidationError) as e:
        ExperimentSpec(model="Blob", blob_width=0, epoch=3)
    locs = {(err["loc"], err["type"]) for err in e.value.errors()}
    assert locs == {(("blob_width",), "greater_than_equal"), (("epoch",), "extra_forbidden")}
    with pytest.raises(ValueError, match="built in"):
        register_field(SpecField("epochs", int, 1))


def test_the_model_builds_trains_on_the_dataset_and_is_certified(tmp_path: Path) -> None:
    spec = ExperimentSpec(model="Blob", blob_width=6, gamma=2.0, train_batch_size=8)
    model = build(spec)
    data = load_data(spec, tmp_path)
    assert data.classes == ["dark", "bright"] and data.mean == (0.5, 0.5, 0.5) and data.std == (1.0, 1.0, 1.0)
    x, y = next(data.train_batches(0))
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y)
    loss.backward()
    assert logits.shape == (8, 2) and torch.isfinite(loss)
    assert verified_bound(model.double()) <= 2.0 * (1 + 1e-9)


# ---- the paper's command line, lbdn submit and the API -------------------------------------------------
ARGV = ["-m", "Blob", "--blob_width", "16", "-g", "3"]


def test_the_paper_command_line_has_the_new_flag() -> None:
    from lipcore.cli import parser, spec_from_args

    spec = spec_from_args(parser().parse_args(ARGV))
    assert spec == ExperimentSpec(model="Blob", blob_width=16, gamma=3.0)
    assert "blobs" in parser().format_help() and "--blob_width" in parser().format_help()


def test_lbdn_submit_has_the_new_flag() -> None:
    from client import flags

    p = argparse.ArgumentParser()
    flags.add_spec_flags(p)
    assert flags.spec_fields(p.parse_args(ARGV)) == {"model": "Blob", "blob_width": 16, "gamma": 3.0}
    assert flags.given(["--blob_width=2"])


def test_the_api_validates_the_new_field(tmp_path: Path) -> None:
    pytest.importorskip("pydantic_settings")
    from api.schemas import TrainRequest
    from core.settings import Settings
    from core.submit import prepare_training

    body = TrainRequest.model_validate({"kind": "train", "spec": {"model": "Blob", "blob_width": 5}})
    stored = prepare_training(body.spec, Settings(home=tmp_path / "var", data_dir=tmp_path / "data"))
    assert stored["blob_width"] == 5 and stored["dataset"] == "blobs" and stored["num_classes"] == 2
    with pytest.raises(ValidationError) as e:
        TrainRequest.model_validate({"kind": "train", "spec": {"model": "Blob", "blob_width": 65}})
    assert [err["loc"] for err in e.value.errors()] == [("spec", "blob_width")]

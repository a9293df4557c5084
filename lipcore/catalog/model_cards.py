"""Model cards: what each architecture accepts, declared once (torch-free).

The spec derives its validation from these cards (which layers and scales a model takes, its
defaults, the settings it forces, regression or classification, 1-D or image input), the API lists
them at `GET /v1/catalog`, and code that must treat a regressor differently asks `spec.task` /
`spec.classifies` instead of comparing model names. The builders live in lipcore/models/toy.py,
kwl.py, resnet.py and dnn.py (`@register_model(name)` needs the card of that name).

A card's layers are either a fixed tuple or every registered family with the capabilities in
`needs` (lipcore.catalog.layer_families), so a newly registered family is accepted by KWL and Toy as soon
as it provides conv/fc/lin (KWL) or fc/lin or a Toy body (Toy).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from lipcore.catalog.layer_families import family_names
from lipcore.catalog.registry import Registry

Task = Literal["classifier", "regressor"]
Inputs = Literal["vector", "image"]


@dataclass(frozen=True)
class ModelCard:
    """One architecture's facts. `forced`: settings the paper's main.py overrides for this model
    (an explicit contradicting value is a user error); `about`: a phrase for messages."""

    name: str
    task: Task
    inputs: Inputs
    scales: tuple[str, ...]
    default_layer: str
    default_scale: str
    layers: tuple[str, ...] | None = None
    needs: frozenset[str] = frozenset()
    forced: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    lln: bool = False  # whether the LLN head is an option
    default_dataset: str | None = None
    about: str = ""

    def layer_names(self) -> tuple[str, ...]:
        """The families this model is defined for (registration order)."""
        return self.layers if self.layers is not None else family_names(self.needs)

    def as_dict(self) -> dict[str, Any]:
        """The card as JSON-able facts (what `GET /v1/catalog` lists)."""
        return {
            "name": self.name,
            "task": self.task,
            "inputs": self.inputs,
            "layers": list(self.layer_names()),
            "scales": list(self.scales),
            "defaults": {"layer": self.default_layer, "scale": self.default_scale},
            "forced": dict(self.forced),
            "lln": self.lln,
            "about": self.about,
        }


CARDS: Registry[ModelCard] = Registry("model", sort=True)
# register (the same card again is a no-op, another card under a taken name an error), get (a ValueError
# naming the registered names otherwise), names and records (sorted order)
register_card = CARDS.register
get_card = CARDS.get
model_names = CARDS.names
cards = CARDS.records


# ---- the paper's models (its model.py and main.py) -------------------------------------------------
TOY = register_card(
    ModelCard(
        "Toy",
        task="regressor",
        inputs="vector",
        scales=("small",),
        default_layer="Plain",
        default_scale="small",
        needs=frozenset({"toy"}),
        forced=MappingProxyType({"loss": "mse"}),
        default_dataset="square_wave",
        about="the 1-D regression of Table 1",
    )
)
KWL = register_card(
    ModelCard(
        "KWL",
        task="classifier",
        inputs="image",
        scales=("small", "medium", "large"),
        default_layer="Plain",
        default_scale="small",
        needs=frozenset({"conv", "fc", "lin"}),
        about="the 4-conv + 3-linear network of Table 2",
    )
)
RESNET = register_card(
    ModelCard(
        "Resnet",
        task="classifier",
        inputs="image",
        scales=("small", "medium", "large", "xlarge"),
        default_layer="SLL",
        default_scale="xlarge",
        layers=("SLL",),
        lln=True,
        about="the SLL network of Araujo et al.",
    )
)
# DNN is the certified-accuracy model of Tables 3-4: main.py forces all of these.
DNN = register_card(
    ModelCard(
        "DNN",
        task="classifier",
        inputs="image",
        scales=("small",),
        default_layer="Sandwich",
        default_scale="small",
        layers=("Sandwich",),
        lln=True,
        forced=MappingProxyType(
            {"layer": "Sandwich", "scale": "small", "lln": True, "normalized": False, "loss": "xent"}
        ),
        about="the deep sandwich network of Tables 3-4",
    )
)

"""The one schema of an experiment: command line, HTTP API, worker and checkpoint all speak it.

`ExperimentSpec` holds the options of the paper's `main.py` (same names, same defaults) and applies
the same resolution rules when it is built, so a spec is always *resolved*: `layer`, `scale`, the
loss and its offset are filled in, and per-dataset facts (channels, image size, classes) are known.
Combinations the paper's code would silently mis-handle are rejected with a message that names the
field and what is allowed.

Which models, layers and scales go together, and what each model forces, comes from the model cards
(lipcore.models.cards) and the layer-family registry (lipcore.layers.families); nothing here is
specific to one model or family. This module imports only pydantic (no torch), so the API process
can validate specs cheaply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lipcore.layers.families import family_names, get_family
from lipcore.models.cards import ModelCard, cards, get_card, model_names

ScaleName = Literal["small", "medium", "large", "xlarge"]
LossName = Literal["xent", "multimargin", "mse"]
CompileMode = Literal["auto", "on", "off"]
PrecisionName = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: input shape and number of outputs."""

    in_channels: int
    img_size: int  # 0 for 1-D data (square_wave)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# Means and stds are the paper's (dataset.py / evaluate.py); `std` is used only with `normalized`.
DATASETS: dict[str, DatasetInfo] = {
    "square_wave": DatasetInfo(1, 0, 1, (0.0,), (1.0,)),
    "cifar10": DatasetInfo(3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo(3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2675, 0.2565, 0.2761)),
    "tiny_imagenet": DatasetInfo(3, 64, 200, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# A user's own image-folder data: shape and classes are read from the folder (lipcore.data).
IMAGE_FOLDER = "image_folder"
DATASET_NAMES = (*DATASETS, IMAGE_FOLDER)

XENT_OFFSET = 1.5


class ExperimentSpec(BaseModel):
    """One experiment of the paper's command line, resolved and validated.

    Field names follow `main.py` (`lln` is `--LLN`). `gamma` is the l2 Lipschitz bound of the
    network from model input (after normalisation) to logits, or, with `lln`, to the input of the
    LLN head (the head's unit rows then bound each logit gap f_i - f_j by gamma ||w_i - w_j||; the
    logit map itself can exceed gamma). It is None only for unconstrained (`Plain`) networks,
    which the paper trains without a bound.
    """

    # finite numbers only: NaN and Infinity (which JSON parsers accept) fail on PostgreSQL and mean nothing
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)

    model: str = Field(
        "Resnet",
        description="architecture; see GET /v1/catalog",
        json_schema_extra=lambda schema: schema.update(enum=list(model_names())),
    )
    layer: str | None = Field(
        None,
        description="layer family (default: the model's); see GET /v1/catalog",
        json_schema_extra=lambda schema: schema.update(anyOf=[{"enum": list(family_names())}, {"type": "null"}]),
    )
    scale: ScaleName | None = None
    gamma: float | None = Field(
        1.0,
        gt=0,
        allow_inf_nan=False,
        description="Lipschitz bound (l2, model-input space) to the logits, or with LLN to the "
        "LLN head's input; > 0; None only for Plain",
    )
    dataset: str = Field("tiny_imagenet", description=f"one of {', '.join(DATASET_NAMES)}")
    data_path: str | None = Field(None, description="image_folder only: folder (absolute, or relative to the data dir)")
    loss: LossName = "xent"
    offset: float | None = Field(None, description="xent only: margin offset (paper: 1.5)")
    epochs: int = Field(100, ge=1, le=100_000)
    seed: int = Field(123, ge=0, le=2**63 - 1)
    lr: float = Field(0.01, gt=0, le=10)
    normalized: bool = False
    lln: bool = Field(False, alias="LLN")
    cert_acc: bool = False
    train_batch_size: int = Field(256, ge=1, le=65_536)
    test_batch_size: int = Field(256, ge=1, le=65_536)
    # Speed options of training only: they never change what is certified (certificates and the
    # test pass always run the eager model in full precision, see lipcore.train).
    compile: CompileMode = Field(
        "auto", description="torch.compile the training step: auto = on for CUDA devices, off on CPU"
    )
    precision: PrecisionName = Field(
        "fp32", description="training arithmetic: fp32, or bf16 autocast (reparameterisations stay fp32)"
    )
    # Filled from DATASETS, or from the folder for image_folder (see lipcore.data.resolve_spec).
    in_channels: int | None = Field(None, ge=1, le=64)
    img_size: int | None = Field(None, ge=0, le=1024)
    num_classes: int | None = Field(None, ge=1, le=100_000)

    @field_validator("model", mode="before")
    @classmethod
    def _known_model(cls, value: Any) -> Any:
        if not isinstance(value, str) or value not in model_names():
            raise ValueError(f"model {value!r} is unknown; expected one of {model_names()}")
        return value

    @field_validator("layer")
    @classmethod
    def _known_layer(cls, value: str | None) -> str | None:
        if value is not None and value not in family_names():
            raise ValueError(f"layer {value!r} is unknown; expected one of {family_names()}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any) -> Any:
        """The paper's main.py rules, applied before field validation."""
        if not isinstance(data, dict):
            return data
        d = dict(data)
        if "LLN" in d and "lln" in d:
            raise ValueError("give either 'lln' or its alias 'LLN', not both")
        if "LLN" in d:
            d["lln"] = d.pop("LLN")
        model = d.get("model", "Resnet")
        if not isinstance(model, str) or model not in model_names():
            return d  # the model field's check reports it (also for a non-string, e.g. {})
        card = get_card(model)
        for key, value in card.forced.items():
            # main.py overrides these silently; a contradicting explicit value is a user error here.
            if d.get(key) is not None and d[key] != value:
                raise ValueError(f"model {model} requires {key}={value!r}, got {d[key]!r}")
            d[key] = value
        if card.default_dataset is not None:
            d.setdefault("dataset", card.default_dataset)
        d["layer"] = d.get("layer") or card.default_layer
        d["scale"] = d.get("scale") or card.default_scale
        if isinstance(d["layer"], str) and d["layer"] in family_names() and not get_family(d["layer"]).bounded:
            d["gamma"] = None  # an unconstrained network has no bound to certify with
        loss = d.get("loss", "xent")
        if loss == "xent":
            d["offset"] = XENT_OFFSET if d.get("offset") is None else d["offset"]
        elif d.get("offset") is not None:
            raise ValueError(f"'offset' applies to loss 'xent' only, not {loss!r}")
        dataset = d.get("dataset", "tiny_imagenet")
        if dataset == "square_wave":
            # main.py forces these for the toy data (300 training points, 200 test points)
            d["train_batch_size"], d["test_batch_size"] = 50, 200
        info = DATASETS.get(dataset) if isinstance(dataset, str) else None
        if info is not None:
            for key in ("in_channels", "img_size", "num_classes"):
                given = d.get(key)
                if given is not None and given != getattr(info, key):
                    raise ValueError(f"{key}={given} contradicts dataset {dataset!r} ({getattr(info, key)})")
                d[key] = getattr(info, key)
        return d

    @model_validator(mode="after")
    def _check(self) -> ExperimentSpec:
        m, card = self.model, self.card
        if self.dataset not in DATASET_NAMES:
            raise ValueError(f"dataset {self.dataset!r} is unknown; expected one of {DATASET_NAMES}")
        if self.layer not in card.layer_names():
            raise ValueError(f"layer {self.layer!r} is not defined for model {m}; expected one of {card.layer_names()}")
        if self.scale not in card.scales:
            raise ValueError(f"scale {self.scale!r} is not defined for model {m}; expected one of {card.scales}")
        if self.bounded:
            if self.gamma is None:
                raise ValueError(f"gamma is required for a Lipschitz-bounded {self.layer} network")
            if not (self.gamma > 0 and self.gamma < float("inf")):
                raise ValueError(f"gamma must be a finite number > 0, got {self.gamma}")
        vector_data = self.dataset in DATASETS and DATASETS[self.dataset].img_size == 0
        if (card.inputs == "vector") != vector_data:
            if card.inputs == "vector":
                wanted = " or ".join(repr(n) for n, i in DATASETS.items() if i.img_size == 0)
                raise ValueError(f"model {m} is {card.about} and needs dataset {wanted}")
            takers = " or ".join(c.name for c in cards() if c.inputs == "vector")
            raise ValueError(f"dataset {self.dataset!r} is 1-D and needs model {takers}, not {m}")
        if card.task == "regressor" and self.loss != "mse":
            raise ValueError(f"model {m} is a regression and trains with loss 'mse'")
        if card.task == "classifier" and self.loss == "mse":
            regressors = " / ".join(c.name for c in cards() if c.task == "regressor")
            raise ValueError(f"loss 'mse' is for the {regressors} regression; use 'xent' or 'multimargin' for {m}")
        if self.lln and not card.lln:
            takers = " and ".join(c.name for c in cards() if c.lln)
            raise ValueError(f"lln (last-layer normalisation) is defined for models {takers}, not {m}")
        if self.cert_acc and self.gamma is None:
            raise ValueError(f"cert_acc needs a Lipschitz bound; an unconstrained {self.layer} network has none")
        if self.dataset == IMAGE_FOLDER:
            if not self.data_path:
                raise ValueError("dataset 'image_folder' needs data_path: the folder holding train/")
            if "\x00" in self.data_path:
                raise ValueError("data_path must not contain a NUL character")
        elif self.data_path is not None:
            raise ValueError(f"data_path is for dataset 'image_folder' only, not {self.dataset!r}")
        if self.img_size not in (None, 0, 32, 64) or (self.img_size == 0 and not vector_data):
            raise ValueError(f"img_size must be 32 or 64 for image data, got {self.img_size}")
        if self.num_classes is not None and card.task == "classifier" and self.num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got num_classes={self.num_classes}")
        return self

    # ---- derived facts -------------------------------------------------------------------
    @property
    def resolved(self) -> bool:
        """True when the input shape and class count are known (always, except image_folder)."""
        return None not in (self.in_channels, self.img_size, self.num_classes)

    @property
    def card(self) -> ModelCard:
        """The model's card (lipcore.models.cards): its layers, scales, defaults and task."""
        return get_card(self.model)

    @property
    def task(self) -> str:
        """ "classifier" or "regressor" (the Toy square wave), from the model's card."""
        return self.card.task

    @property
    def classifies(self) -> bool:
        """True when the model outputs class logits (accuracy, certificates and attacks apply)."""
        return self.card.task == "classifier"

    @property
    def bounded(self) -> bool:
        """True when the layer family has a Lipschitz bound (False for Plain: gamma is None)."""
        return self.layer is not None and get_family(self.layer).bounded

    @property
    def dataset_info(self) -> DatasetInfo | None:
        return DATASETS.get(self.dataset)

    def run_name(self) -> str:
        """The paper's run-directory leaf: `{model}-{layer}-{scale}[-LLN]-gamma{g:.1f}`."""
        name = f"{self.model}-{self.layer}-{self.scale}"
        if self.gamma is None:
            return name
        return f"{name}{'-LLN' if self.lln else ''}-gamma{self.gamma:.1f}"

    def train_dir(self, root_dir: str = "./saved_models") -> str:
        """The paper's `{root_dir}_seed{seed}/{dataset}/{run_name}` directory (not created)."""
        return f"{root_dir}_seed{self.seed}/{self.dataset}/{self.run_name()}"

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ExperimentSpec:
        return cls.model_validate_json(text)

"""The one schema of an experiment: command line, HTTP API, worker and checkpoint all speak it.

`ExperimentSpec` holds the options of the paper's `main.py` (same names, same defaults) and applies
the same resolution rules when it is built, so a spec is always *resolved*: `layer`, `scale`, the
loss and its offset are filled in, and per-dataset facts (channels, image size, classes) are known.
Combinations the paper's code would silently mis-handle are rejected with a message that names the
field and what is allowed.

Which models, layers, datasets and scales go together, and what each model forces, comes from the
records of this catalog (model_cards.py, layer_families.py, dataset_cards.py); nothing here is specific to one
model, family or dataset. Fields registered later (fields.py) are validated here too. Only pydantic
is imported (no torch), so the API process validates specs cheaply. The public name is
`lipcore.spec.ExperimentSpec` (lipcore/spec.py re-exports this module's names).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails

from lipcore.catalog.dataset_cards import IMAGE_FOLDER, DatasetCard, DatasetInfo, dataset_names, datasets, get_dataset
from lipcore.catalog.fields import Flag, SpecField, add_field, extension_fields
from lipcore.catalog.layer_families import family_names, get_family
from lipcore.catalog.model_cards import ModelCard, cards, get_card, model_names

ScaleName = Literal["small", "medium", "large", "xlarge"]
LossName = Literal["xent", "multimargin", "mse"]
CompileMode = Literal["auto", "on", "off"]
PrecisionName = Literal["fp32", "bf16"]

XENT_OFFSET = 1.5
HIDDEN = Flag(hidden=True)  # filled from the dataset, not set on the command line

__all__ = ["IMAGE_FOLDER", "XENT_OFFSET", "ExperimentSpec", "register_field"]


def _schema_extras(schema: dict[str, Any]) -> None:
    """Registered fields in the spec's JSON schema; anything else is refused (extra keys are checked
    by `_resolve`, because registered fields are kept as pydantic extras)."""
    props = schema.setdefault("properties", {})
    for f in extension_fields():
        props[f.name] = f.json_schema()
    schema["additionalProperties"] = False


class ExperimentSpec(BaseModel):
    """One experiment of the paper's command line, resolved and validated.

    Field names follow `main.py` (`lln` is `--LLN`). `gamma` is the l2 Lipschitz bound of the
    network from model input (after normalisation) to logits, or, with `lln`, to the input of the
    LLN head (the head's unit rows then bound each logit gap f_i - f_j by gamma ||w_i - w_j||; the
    logit map itself can exceed gamma). It is None only for unconstrained (`Plain`) networks,
    which the paper trains without a bound. Fields registered with `register_field` are attributes
    too (pydantic extras, validated by their records).
    """

    # finite numbers only: NaN and Infinity (which JSON parsers accept) fail on PostgreSQL and mean nothing
    model_config = ConfigDict(
        extra="allow",
        frozen=True,
        populate_by_name=True,
        allow_inf_nan=False,
        json_schema_extra=_schema_extras,
    )

    model: Annotated[str, Flag("-m", model_names)] = Field(
        "Resnet",
        description="architecture; see GET /v1/catalog",
        json_schema_extra=lambda schema: schema.update(enum=list(model_names())),
    )
    layer: Annotated[str | None, Flag(names=family_names)] = Field(
        None,
        description="layer family (default: the model's); see GET /v1/catalog",
        json_schema_extra=lambda schema: schema.update(anyOf=[{"enum": list(family_names())}, {"type": "null"}]),
    )
    scale: ScaleName | None = Field(None, description="network size (default: the model's)")
    gamma: Annotated[float | None, Flag("-g")] = Field(
        1.0,
        gt=0,
        allow_inf_nan=False,
        description="Lipschitz bound (l2, model-input space) to the logits, or with LLN to the "
        "LLN head's input; > 0; None only for Plain",
    )
    dataset: Annotated[str, Flag("-d", dataset_names)] = Field(
        "tiny_imagenet",
        description="dataset (default: the model's, else tiny_imagenet)",
        json_schema_extra=lambda schema: schema.update(enum=list(dataset_names())),
    )
    data_path: str | None = Field(None, description="image_folder only: folder (absolute, or relative to the data dir)")
    loss: LossName = Field("xent", description="training loss (Toy: mse)")
    offset: float | None = Field(None, description="xent only: margin offset (paper: 1.5)")
    epochs: Annotated[int, Flag("-e")] = Field(100, ge=1, le=100_000, description="training epochs")
    seed: Annotated[int, Flag("-s")] = Field(123, ge=0, le=2**63 - 1, description="random seed")
    lr: float = Field(0.01, gt=0, le=10, description="peak learning rate")
    normalized: bool = Field(False, description="divide inputs by the dataset std")
    lln: bool = Field(False, alias="LLN", description="last-layer normalisation (DNN, Resnet)")
    cert_acc: bool = Field(False, description="record certified accuracy every epoch")
    train_batch_size: int = Field(256, ge=1, le=65_536, description="training batch size")
    test_batch_size: int = Field(256, ge=1, le=65_536, description="test batch size")
    # Speed options of training only: they never change what is certified (certificates and the
    # test pass always run the eager model in full precision, see lipcore.train).
    compile: CompileMode = Field(
        "auto", description="torch.compile the training step: auto = on for CUDA devices, off on CPU"
    )
    precision: PrecisionName = Field(
        "fp32", description="training arithmetic: fp32, or bf16 autocast (reparameterisations stay fp32)"
    )
    # Filled from the dataset's card, or from the folder for image_folder (lipcore.data.resolve_spec).
    in_channels: Annotated[int | None, HIDDEN] = Field(None, ge=1, le=64)
    img_size: Annotated[int | None, HIDDEN] = Field(None, ge=0, le=1024)
    num_classes: Annotated[int | None, HIDDEN] = Field(None, ge=1, le=100_000)

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

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        get_dataset(value)  # ValueError naming the registered datasets
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
        _check_registered_fields(d, set(cls.model_fields))
        model = d.get("model", "Resnet")
        if not isinstance(model, str) or model not in model_names():
            return d  # the model field's check reports it (also for a non-string, e.g. {})
        _apply_card(d, get_card(model))
        loss = d.get("loss", "xent")
        if loss == "xent":
            d["offset"] = XENT_OFFSET if d.get("offset") is None else d["offset"]
        elif d.get("offset") is not None:
            raise ValueError(f"'offset' applies to loss 'xent' only, not {loss!r}")
        dataset = d.get("dataset", "tiny_imagenet")
        if isinstance(dataset, str) and dataset in dataset_names():
            _apply_dataset(d, get_dataset(dataset))
        return d

    @model_validator(mode="after")
    def _check(self) -> ExperimentSpec:
        m, card = self.model, self.card
        if self.layer not in card.layer_names():
            raise ValueError(f"layer {self.layer!r} is not defined for model {m}; expected one of {card.layer_names()}")
        if self.scale not in card.scales:
            raise ValueError(f"scale {self.scale!r} is not defined for model {m}; expected one of {card.scales}")
        if self.bounded:
            if self.gamma is None:
                raise ValueError(f"gamma is required for a Lipschitz-bounded {self.layer} network")
            if not (self.gamma > 0 and self.gamma < float("inf")):
                raise ValueError(f"gamma must be a finite number > 0, got {self.gamma}")
        _check_inputs(self, card)
        _check_model_task(self, card)
        _check_data(self, card)
        return self

    # ---- derived facts -------------------------------------------------------------------
    @property
    def resolved(self) -> bool:
        """True when the input shape and class count are known (always, except image_folder)."""
        return None not in (self.in_channels, self.img_size, self.num_classes)

    @property
    def card(self) -> ModelCard:
        """The model's card (lipcore.catalog.model_cards): its layers, scales, defaults and task."""
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
        """The dataset's fixed facts (None for image folders: shape and statistics read from the data)."""
        return get_dataset(self.dataset).info()

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


def register_field(spec_field: SpecField) -> SpecField:
    """Add a field to every spec (see lipcore.catalog.fields); its name must not be a built-in field."""
    builtin = {*ExperimentSpec.model_fields, "LLN"}
    if spec_field.name in builtin:
        raise ValueError(f"spec field {spec_field.name!r} is built in")
    return add_field(spec_field)


def _check_registered_fields(d: dict[str, Any], builtin: set[str]) -> None:
    """Refuse unknown keys as `extra="forbid"` would; default and validate registered fields in `d`."""
    registered = {f.name: f for f in extension_fields()}
    errors = [
        InitErrorDetails(type="extra_forbidden", loc=(key,), input=value)
        for key, value in d.items()
        if key not in builtin and key not in registered
    ]
    for name, f in registered.items():
        try:
            d[name] = f.adapter.validate_python(d.get(name, f.default))
        except ValidationError as e:
            errors += [
                InitErrorDetails(type=err["type"], loc=(name, *err["loc"]), input=err["input"], ctx=err.get("ctx", {}))
                for err in e.errors()
            ]
    if errors:
        raise ValidationError.from_exception_data(ExperimentSpec.__name__, errors)


def _apply_card(d: dict[str, Any], card: ModelCard) -> None:
    """The model's forced settings (a contradicting explicit value is a user error) and defaults."""
    for key, value in card.forced.items():
        # main.py overrides these silently; a contradicting explicit value is a user error here.
        if d.get(key) is not None and d[key] != value:
            raise ValueError(f"model {card.name} requires {key}={value!r}, got {d[key]!r}")
        d[key] = value
    if card.default_dataset is not None:
        d.setdefault("dataset", card.default_dataset)
    d["layer"] = d.get("layer") or card.default_layer
    d["scale"] = d.get("scale") or card.default_scale
    if isinstance(d["layer"], str) and d["layer"] in family_names() and not get_family(d["layer"]).bounded:
        d["gamma"] = None  # an unconstrained network has no bound to certify with


def _apply_dataset(d: dict[str, Any], info: DatasetCard) -> None:
    """The dataset's overrides (silent, as main.py's) and its shape (a contradiction is an error)."""
    d.update(info.overrides)
    for key, value in info.shape().items():
        given = d.get(key)
        if given is not None and given != value:
            raise ValueError(f"{key}={given} contradicts dataset {info.name!r} ({value})")
        d[key] = value


def _check_model_task(spec: ExperimentSpec, card: ModelCard) -> None:
    m = spec.model
    if card.task == "regressor" and spec.loss != "mse":
        raise ValueError(f"model {m} is a regression and trains with loss 'mse'")
    if card.task == "classifier" and spec.loss == "mse":
        regressors = " / ".join(c.name for c in cards() if c.task == "regressor")
        raise ValueError(f"loss 'mse' is for the {regressors} regression; use 'xent' or 'multimargin' for {m}")
    if spec.lln and not card.lln:
        takers = " and ".join(c.name for c in cards() if c.lln)
        raise ValueError(f"lln (last-layer normalisation) is defined for models {takers}, not {m}")
    if spec.cert_acc and spec.gamma is None:
        raise ValueError(f"cert_acc needs a Lipschitz bound; an unconstrained {spec.layer} network has none")


def _check_inputs(spec: ExperimentSpec, card: ModelCard) -> None:
    """1-D data for 1-D models, images for image models."""
    if card.inputs != get_dataset(spec.dataset).inputs:
        if card.inputs == "vector":
            wanted = " or ".join(repr(d.name) for d in datasets() if d.inputs == "vector")
            raise ValueError(f"model {spec.model} is {card.about} and needs dataset {wanted}")
        takers = " or ".join(c.name for c in cards() if c.inputs == "vector")
        raise ValueError(f"dataset {spec.dataset!r} is 1-D and needs model {takers}, not {spec.model}")


def _check_data(spec: ExperimentSpec, card: ModelCard) -> None:
    """data_path exactly for folder datasets; image sizes and class counts the models can take."""
    info = get_dataset(spec.dataset)
    if info.from_folder:
        if not spec.data_path:
            raise ValueError(f"dataset {spec.dataset!r} needs data_path: the folder holding train/")
        if "\x00" in spec.data_path:
            raise ValueError("data_path must not contain a NUL character")
    elif spec.data_path is not None:
        folders = " or ".join(repr(d.name) for d in datasets() if d.from_folder)
        raise ValueError(f"data_path is for dataset {folders} only, not {spec.dataset!r}")
    if spec.img_size not in (None, 0, 32, 64) or (spec.img_size == 0 and info.inputs != "vector"):
        raise ValueError(f"img_size must be 32 or 64 for image data, got {spec.img_size}")
    if spec.num_classes is not None and card.task == "classifier" and spec.num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got num_classes={spec.num_classes}")

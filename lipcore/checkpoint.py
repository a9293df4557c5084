"""Checkpoints in safetensors: weights plus the ExperimentSpec; pickles only as the paper's model.ckpt.

Two files per run:
- `model.safetensors`: the weights, with metadata `spec` (JSON), `classes`, `mean`, `std`;
  `load_model` rebuilds the network from the spec and loads the weights strictly.
- `checkpoint.safetensors`: everything a resumed run needs to continue bit-for-bit: model and
  Adam state tensors, RNG states, and (as JSON metadata) the optimizer's hyper-parameters, the
  position in the schedule and the metric history.
Both are written to a temporary file and renamed, so a crash never leaves half a checkpoint.

`load_model` also reads a checkpoint written by the paper's code (`model.ckpt`, a torch.save of the
state dict), only through `torch.load(weights_only=True)`; see lipcore.paper_checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from lipcore.spec import ExperimentSpec

MODEL_FORMAT = "lbdn-model/1"
STATE_FORMAT = "lbdn-train-state/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, not safetensors, or not one of ours."""


@dataclass
class LoadedModel:
    """A network rebuilt from a checkpoint, in eval mode, with what is needed to feed it."""

    model: nn.Module
    spec: ExperimentSpec
    classes: list[str]
    mean: tuple[float, ...]  # x_model = (x_pixel - mean) / std, per channel
    std: tuple[float, ...]
    source: str = "lbdn"  # "lbdn" (model.safetensors) or "paper" (the paper's model.ckpt)
    # The paper's SLL epsilon placement is in use (imports): model.gamma was raised by this factor.
    sll_reference_epsilon: bool = False
    bound_factor: float = 1.0


def _write_atomic(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _read(path: Path, expected_format: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    if meta.get("format") != expected_format:
        raise CheckpointError(f"{path} is not an {expected_format} file (format={meta.get('format')!r})")
    return tensors, meta


def save_model(
    path: str | Path,
    model: nn.Module,
    spec: ExperimentSpec,
    *,
    classes: list[str] | None = None,
    mean: tuple[float, ...] = (0.0,),
    std: tuple[float, ...] = (1.0,),
    sll_reference_epsilon: bool = False,
) -> None:
    """Write the weights of `model` with its spec and input normalisation to `path`.

    `sll_reference_epsilon`: the weights come from the paper's code and its SLL epsilon placement
    must be restored on load (see lipcore.paper_checkpoint); recorded in the metadata.
    """
    meta = {
        "format": MODEL_FORMAT,
        "spec": spec.model_dump_json(),
        "classes": json.dumps(list(classes or [])),
        "mean": json.dumps(list(mean)),
        "std": json.dumps(list(std)),
    }
    if sll_reference_epsilon:
        meta["sll_reference_epsilon"] = "true"
    _write_atomic(Path(path), dict(model.state_dict()), meta)


def load_model(path: str | Path, spec: ExperimentSpec | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a trained network (eval mode, on `device`) from one of:

    - a `model.safetensors` file of ours (its own spec is used; `spec` is ignored);
    - a paper `model.ckpt` (a torch.save of the state dict, read with weights_only=True only),
      with `spec`, or else the spec told by its paper-style run directory path;
    - a run directory holding either (model.safetensors preferred).

    For backward compatibility a device given as the second positional argument is accepted.
    Raises CheckpointError (a ValueError) naming what is wrong: for a misfit the first mismatched
    key and both shapes.
    """
    if spec is not None and not isinstance(spec, ExperimentSpec):
        spec, device = None, spec  # the old signature load_model(path, device)
    path = Path(path)
    if path.is_dir():
        from lipcore.paper_checkpoint import PAPER_CHECKPOINT
        from lipcore.rundir import MODEL

        if (path / MODEL).is_file():
            path = path / MODEL
        elif (path / PAPER_CHECKPOINT).is_file():
            path = path / PAPER_CHECKPOINT
        else:
            raise CheckpointError(f"{path} holds neither {MODEL} nor a paper {PAPER_CHECKPOINT}")
    # a file named .safetensors is ours whatever its bytes: a corrupt one must say so, not be
    # mistaken for a pickle because its first byte happens to be 0x80
    if path.suffix != ".safetensors" and is_paper_checkpoint(path):
        return load_paper_model(path, spec, device)
    return _load_safetensors_model(path, device)


def is_paper_checkpoint(path: str | Path) -> bool:
    """True for a torch.save file (zip or legacy pickle), judged by its first bytes, not its name.

    A safetensors file starts with an 8-byte header length and then '{'; its first byte can be
    0x80 like a pickle's, so the '{' is checked first.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if head.startswith(b"PK\x03\x04"):
        return True
    return head[8:9] != b"{" and head[:1] == b"\x80"


def load_paper_model(
    path: str | Path, spec: ExperimentSpec | None = None, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Load a checkpoint written by the paper's code; see `load_model` and lipcore.paper_checkpoint."""
    from lipcore import paper_checkpoint as pc
    from lipcore.models import build

    path = Path(path)
    try:
        spec = spec or pc.spec_from_run_dir(path)
        state = pc.read_state_dict(path)
        if not spec.resolved:
            raise CheckpointError(f"spec for dataset {spec.dataset!r} does not know its input shape/classes")
        with torch.device("meta"):
            model = build(spec)
        model = model.to_empty(device="cpu")
        state = pc.map_keys(state, model, spec)
        pc.check_fit(state, model, path.name)
    except pc.PaperCheckpointError as e:
        raise CheckpointError(str(e)) from None
    model.load_state_dict(state, strict=True)
    factor = pc.use_reference_sll(model)
    gamma = getattr(model, "gamma", None)
    if gamma is not None:
        model.gamma = gamma * factor
    classes, mean, std = check_metadata(
        spec, pc.class_names(spec), *pc.input_normalisation(spec), where=f"{path.name} (spec)"
    )
    model = model.to(device).eval()
    return LoadedModel(
        model,
        spec,
        classes,
        mean,
        std,
        source="paper",
        sll_reference_epsilon=True,
        bound_factor=factor,
    )


def _load_safetensors_model(path: Path, device: str | torch.device) -> LoadedModel:
    from lipcore.models import build

    tensors, meta = _read(path, MODEL_FORMAT)
    try:
        spec = ExperimentSpec.model_validate_json(meta["spec"])
        classes, mean, std = (json.loads(meta[k]) for k in ("classes", "mean", "std"))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path} has invalid metadata: {e}") from None
    classes, mean, std = check_metadata(spec, classes, mean, std, where=f"{path.name} metadata")
    with torch.device("meta"):
        model = build(spec)
    model = model.to_empty(device="cpu")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not match the architecture of its spec: {e}") from None
    reference = meta.get("sll_reference_epsilon") == "true"
    factor = 1.0
    if reference:
        from lipcore.paper_checkpoint import use_reference_sll

        factor = use_reference_sll(model)
        gamma = getattr(model, "gamma", None)
        if gamma is not None:
            model.gamma = gamma * factor
    model = model.to(device).eval()
    return LoadedModel(model, spec, classes, mean, std, sll_reference_epsilon=reference, bound_factor=factor)


def check_metadata(
    spec: ExperimentSpec, classes: Any, mean: Any, std: Any, where: str = "metadata"
) -> tuple[list[str], tuple[float, ...], tuple[float, ...]]:
    """(classes, mean, std) checked against the model's spec, or CheckpointError naming the field.

    classes: a list of strings, at most one per class (spec.num_classes; 2 for a single-output
    decision); mean, std:
    non-empty lists of finite numbers, one value or one per input channel (spec.in_channels, 1 for
    vector data), std > 0 (x_model = (x_pixel - mean) / std must exist, and a pixel radius is a
    model-space radius times min(std)).
    """
    n_classes = spec.num_classes
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{where}: 'classes' must be a list of strings (class names), got {_show(classes)}")
    # (fewer names than outputs is accepted: a dataset folder may name only the classes it holds,
    # and an unnamed class is shown without a name; more names than outputs cannot be right)
    if n_classes is not None and len(classes) > max(n_classes, 2):
        raise CheckpointError(
            f"{where}: 'classes' has {len(classes)} names but the model has {n_classes} outputs "
            "(give at most one name per class, or an empty list)"
        )
    channels = spec.in_channels or 1
    out = []
    for field, values in (("mean", mean), ("std", std)):
        ok = isinstance(values, (list, tuple)) and len(values) in {1, channels}
        ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        if not ok:
            raise CheckpointError(
                f"{where}: '{field}' must be a list of 1 or {channels} (input channels) finite numbers, "
                f"got {_show(values)}"
            )
        out.append(tuple(float(v) for v in values))
    if not all(v > 0 for v in out[1]):
        raise CheckpointError(f"{where}: 'std' must be > 0 for every channel, got {_show(std)}")
    return list(classes), out[0], out[1]


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, tuple) else json.dumps(list(value))
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass
class TrainState:
    """A resumable training state: where the run is and everything needed to continue it."""

    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Tensor]
    position: dict[str, Any]  # {"epoch": completed epochs, "step": steps done in the next one, ...}
    history: list[dict[str, Any]]  # per-epoch metrics so far
    spec_json: str


def save_train_state(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    spec: ExperimentSpec,
    rng: dict[str, Tensor],
    position: dict[str, Any],
    history: list[dict[str, Any]],
) -> None:
    """Write a resumable checkpoint (see module docstring) atomically to `path`."""
    tensors: dict[str, Tensor] = {f"model/{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"optim/{idx}/{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    tensors.update({f"rng/{k}": v for k, v in rng.items()})
    meta = {
        "format": STATE_FORMAT,
        "spec": spec.model_dump_json(),
        "param_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "position": json.dumps(position),
        "history": json.dumps(history),
    }
    _write_atomic(Path(path), tensors, meta)


def load_train_state(path: str | Path) -> TrainState:
    """Read a checkpoint written by `save_train_state`."""
    tensors, meta = _read(Path(path), STATE_FORMAT)
    model = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    rng = {k[len("rng/") :]: v for k, v in tensors.items() if k.startswith("rng/")}
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim/"):
            _, idx, key = k.split("/", 2)
            state.setdefault(int(idx), {})[key] = v
    for idx, values in json.loads(meta["optim_scalars"]).items():
        state.setdefault(int(idx), {}).update(values)
    optimizer = {"state": state, "param_groups": json.loads(meta["param_groups"])}
    return TrainState(
        model=model,
        optimizer=optimizer,
        rng=rng,
        position=json.loads(meta["position"]),
        history=json.loads(meta["history"]),
        spec_json=meta["spec"],
    )

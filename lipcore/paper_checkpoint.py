"""Checkpoints written by the paper's own code (`model.ckpt`): safe reading and key mapping.

The paper's `main.py` saves `torch.save(model.state_dict(), f"{train_dir}/model.ckpt")`, a zip
pickle. It is read here only with `torch.load(..., weights_only=True)`: PyTorch's restricted
unpickler, which builds tensors and plain containers and refuses every other global, so a file
crafted to run code on load is refused before anything of it runs. What comes out must then be a
flat {name: tensor} mapping, or it is refused too.

Key layouts (the paper's containers -> ours, `lipcore.models`):
- Toy, KWL, DNN: `model.<i>.<param>` -> `body.<i>.<param>` (same layer positions);
- Resnet: `stable_block.<i>` -> the i-th SLL conv block, `layers_linear.<j>` -> the j-th SLL linear
  block (in index order), `last_last` -> the LLN head (the padding, pooling and read-out have no
  parameters). Position in our `body` is looked up in the built model, not hard-coded.

The paper's SLL linear block puts its epsilon on 1/q_i only (`SLLBlockFc(reference_epsilon=True)`).
An import reproduces those outputs exactly, so the imported network uses that form; its bound is
then not gamma but gamma times a factor >= 1 per block (see `reference_sll_factor`), and the model's
`gamma` is set to that larger, rigorous bound so certificates stay sound.
"""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lipcore.spec import ExperimentSpec

if TYPE_CHECKING:
    from lipcore.layers.sll import SLLBlockFc

PAPER_CHECKPOINT = "model.ckpt"
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
# `{model}-{layer}-{scale}[-LLN][-gamma{g}]`, the leaf of the paper's train_dir.
RUN_NAME = re.compile(
    r"^(?P<model>DNN|KWL|Resnet|Toy)-(?P<layer>Sandwich|Orthogon|Aol|SLL|Plain)-"
    r"(?P<scale>small|medium|large|xlarge)(?P<lln>-LLN)?(?:-gamma(?P<gamma>[0-9.eE+-]+))?$"
)
SEED_DIR = re.compile(r"_seed(?P<seed>[0-9]+)$")


class PaperCheckpointError(ValueError):
    """A paper checkpoint is unreadable, not a plain state dict, or does not fit the architecture."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The {name: tensor} state dict of a `torch.save` file, read with weights_only=True only.

    Anything else (a pickle of another object, one that would import or call code, a dict holding
    non-tensors) raises PaperCheckpointError; nothing in the file is executed.
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PaperCheckpointError(f"no checkpoint at {path}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, ImportError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PaperCheckpointError(
            f"{path.name} is not a plain state dict (a torch.save of {{name: tensor}}); refused without "
            f"running it: {first[:300]}"
        ) from None
    return _plain_state_dict(obj, path.name)


def _plain_state_dict(obj: Any, what: str) -> dict[str, Tensor]:
    if not isinstance(obj, Mapping):
        raise PaperCheckpointError(f"{what} holds a {type(obj).__name__}, not a state dict {{name: tensor}}")
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise PaperCheckpointError(
                f"{what} is not a plain state dict: entry {key!r} is a {type(value).__name__}, expected a tensor"
            )
        out[key] = value
    if not out:
        raise PaperCheckpointError(f"{what} is an empty state dict")
    return out


def spec_from_run_dir(path: str | Path) -> ExperimentSpec:
    """The ExperimentSpec of a paper-style run directory (or of a file inside one).

    `.../{root}_seed{seed}/{dataset}/{model}-{layer}-{scale}[-LLN]-gamma{g}`; the seed part is
    optional (default: the spec's). Raises PaperCheckpointError when the path does not say enough.
    """
    p = Path(path)
    if p.suffix:  # a file: its folder is the run directory
        p = p.parent
    m = RUN_NAME.match(p.name)
    if m is None:
        raise PaperCheckpointError(
            f"cannot tell the experiment from the folder name {p.name!r}: expected "
            "'{model}-{layer}-{scale}[-LLN]-gamma{g}' (e.g. KWL-Sandwich-small-gamma2.0); pass a spec instead"
        )
    fields: dict[str, Any] = {
        "model": m["model"],
        "layer": m["layer"],
        "scale": m["scale"],
        "dataset": p.parent.name,
    }
    if m["lln"]:
        fields["lln"] = True
    if m["gamma"] is not None and m["layer"] != "Plain":
        fields["gamma"] = float(m["gamma"])
    seed = SEED_DIR.search(p.parent.parent.name)
    if seed:
        fields["seed"] = int(seed["seed"])
    try:
        return ExperimentSpec(**fields)
    except ValueError as e:
        raise PaperCheckpointError(f"the run directory {p} does not name a valid experiment: {e}") from None


def map_keys(state: Mapping[str, Tensor], model: nn.Module, spec: ExperimentSpec) -> dict[str, Tensor]:
    """The paper's key names -> ours for `model` (built from `spec`); see the module docstring.

    Keys already in our layout (`body.`) pass unchanged; a DataParallel `module.` prefix is dropped.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if all(k.startswith("body.") for k in state):
        return dict(state)
    if spec.model != "Resnet":
        return {("body." + k[len("model.") :] if k.startswith("model.") else k): v for k, v in state.items()}
    from lipcore.layers import LinearNormalized, SLLBlockConv, SLLBlockFc
    from lipcore.models.base import body_of

    body = list(body_of(model))
    targets = {
        "stable_block": [i for i, m in enumerate(body) if isinstance(m, SLLBlockConv)],
        "layers_linear": [i for i, m in enumerate(body) if isinstance(m, SLLBlockFc)],
        "last_last": [i for i, m in enumerate(body) if isinstance(m, LinearNormalized)],
    }
    # The paper's positions inside each container, in order (layers_linear.0 is its Flatten).
    seen: dict[str, list[str]] = {name: [] for name in targets}
    for key in state:
        parts = key.split(".")
        if parts[0] in ("stable_block", "layers_linear") and len(parts) >= 3 and parts[1] not in seen[parts[0]]:
            seen[parts[0]].append(parts[1])
    order = {name: {pos: rank for rank, pos in enumerate(sorted(ps, key=int))} for name, ps in seen.items()}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        container = parts[0]
        if container == "last_last" and targets["last_last"]:
            out[f"body.{targets['last_last'][0]}.{'.'.join(parts[1:])}"] = value
            continue
        if container in ("stable_block", "layers_linear") and len(parts) >= 3 and parts[1].isdigit():
            rank = order[container][parts[1]]
            if rank < len(targets[container]):
                out[f"body.{targets[container][rank]}.{'.'.join(parts[2:])}"] = value
                continue
        out[key] = value  # left as is: reported as unexpected by `check_fit`
    return out


def check_fit(state: Mapping[str, Tensor], model: nn.Module, source: str = "checkpoint") -> None:
    """Raise PaperCheckpointError naming the first key that does not fit `model` and both shapes."""
    ours = model.state_dict()
    for key, value in state.items():
        if key not in ours:
            raise PaperCheckpointError(
                f"{source}: key {key!r} (shape {list(value.shape)}) has no place in this {type(model).__name__}; "
                f"it expects keys such as {list(ours)[:3]}"
            )
        if tuple(value.shape) != tuple(ours[key].shape):
            raise PaperCheckpointError(
                f"{source}: key {key!r} has shape {list(value.shape)} but the architecture of the spec "
                f"needs {list(ours[key].shape)} (is the spec right: model, layer, scale, dataset, LLN?)"
            )
    missing = [k for k in ours if k not in state]
    if missing:
        raise PaperCheckpointError(
            f"{source}: key {missing[0]!r} (shape {list(ours[missing[0]].shape)}) is missing "
            f"({len(missing)} missing in all)"
        )


def reference_sll_factor(block: SLLBlockFc) -> float:
    """Rigorous l2 Lipschitz bound (>= 1) of an SLLBlockFc using the paper's epsilon placement.

    The paper's T_i = 2 (q_i + eps) / sum_j |W W^T|_ij q_j is c_i times an exact SLL instance
    T*, for two choices of the SLL certificate: q itself (c_i = (q_i + eps) / q_i) and q + eps
    (c_i = 1 + eps sum_j |G_ij| / sum_j |G_ij| q_j). Then 0 <= K = 2 W^T T D W <= c_max K*, and K*
    has eigenvalues in [0, 2], so ||I - K|| <= max(1, 2 c_max - 1). The better of the two is used.
    Computed in float64.
    """
    w = block.weights.detach().double()
    q = block.q.detach().double().abs()
    eps = float(block.epsilon)
    gram = (w @ w.T).abs()
    s = (gram * q[None, :]).sum(1)
    c_q = torch.where(q > 0, (q + eps) / q.clamp_min(1e-300), torch.full_like(q, math.inf)).max()
    c_qe = torch.where(s > 0, 1 + eps * gram.sum(1) / s.clamp_min(1e-300), torch.full_like(s, math.inf)).max()
    c = float(min(c_q, c_qe))
    return max(1.0, 2.0 * c - 1.0)


def use_reference_sll(model: nn.Module) -> float:
    """Switch every SLLBlockFc of `model` to the paper's epsilon and return the product of their
    bound factors (1.0 when there are none); the caller multiplies gamma by it."""
    from lipcore.layers import SLLBlockFc

    factor = 1.0
    for m in model.modules():
        if isinstance(m, SLLBlockFc):
            m.reference_epsilon = True
            if hasattr(m, "invalidate"):
                m.invalidate()
            factor *= reference_sll_factor(m)
    return factor


def input_normalisation(spec: ExperimentSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the paper's data pipeline for `spec`: mean always, std only with `normalized`."""
    info = spec.dataset_info
    if info is None:
        c = spec.in_channels or 1
        return (0.0,) * c, (1.0,) * c
    return info.mean, (info.std if spec.normalized else (1.0,) * len(info.std))


def class_names(spec: ExperimentSpec) -> list[str]:
    """Class names where they are fixed by the dataset (CIFAR-10); otherwise [] (unknown here)."""
    return list(CIFAR10_CLASSES) if spec.dataset == "cifar10" else []

"""Export a trained network for deployment: effective weights frozen into standard operators.

`to_onnx(loaded, path)` writes an ONNX file (onnxruntime runs it), `to_torch(loaded, path)` a
`torch.export` program (.pt2; `torch.export.load` runs it without lipcore). Both carry the metadata
a consumer needs to certify (`bound_metadata` plus input normalisation, classes, spec).

What each layer becomes (all exact rewrites of the layer's own forward, from its effective weights;
each layer's `export()` builds it from the modules of lipcore.layers.ops):
- FC sandwich -> Linear(sqrt2 Psi^-1 B, b) / ReLU / Linear(sqrt2 A^T Psi, no bias); orthogonal, AOL,
  LLN and the last sandwich layer -> one Linear (the input `scale` folded into the weight);
- circular (FFT) convolutions -> by default `CircularDFT`: the 2-D real DFT as products with
  constant cos/sin matrices, the layer's per-frequency complex maps as a real batched MatMul pair,
  and the inverse DFT (circular="dft"); or CircularPad2d + Conv2d with the full n x n spatial kernel,
  read off the layer's frequency response by its impulse responses (circular="conv"). Stride 2 ->
  PixelUnshuffle(2) then the pointwise (1x1) convolution, as the layer itself does;
- SLL blocks -> x - T relu(x W^T + b) W (one copy of W) / x - ConvTranspose2d(T relu(Conv2d(x)));
- channel padding / read-out -> a 1x1 Conv2d / Linear with a scaled 0/1 matrix.

Why DFT-by-MatMul, not full kernels or the ONNX DFT operator: a Cayley-transformed kernel has full
n x n support, so the dense Conv2d costs c_out c_in n^2 per output pixel, where the DFT form costs
O(n) per pixel for the transforms plus c_out c_in per frequency, all in large GEMMs that
onnxruntime's MLAS runs well. Measured with bench/export.py (2 threads, batch 256, a busy machine):
KWL-Sandwich-small 3.1 s (dft) vs 26.0 s (conv), lipcore 3.9 s; KWL-Orthogon 1.34 s vs 3.88 s,
lipcore 1.40 s. The ONNX DFT operator was not tried (not measured): it transforms one axis at a
time and has no batched per-frequency complex product, so the channel mixing would be the same
MatMul pair; only the transforms could differ.

Radii from an exported model are in **model-input space** (after (x - mean) / std), as lipcore's.
"""

from __future__ import annotations

import copy
import json
import math
import os
import threading
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lipcore import export_check
from lipcore.certify import BoundReport, RoundingModel, certify, float64_model, verified_bound
from lipcore.checkpoint import LoadedModel
from lipcore.layers.channels import FirstChannel
from lipcore.layers.ops import CIRCULAR_FORMS, Mul, conv_op, linear_op
from lipcore.models.base import body_of

METADATA_KEY = "lbdn"  # ONNX metadata_props key / torch extra file "lbdn.json"


def standard_layer(layer: nn.Module, circular: str = "dft") -> nn.Module:
    """One lipcore layer as a module of standard torch operators with its effective weights frozen.

    circular: how circular (FFT) convolutions are written: "dft" (`CircularDFT`, matrix products) or
    "conv" (CircularPad2d + Conv2d with the full n x n kernel).
    """
    if circular not in CIRCULAR_FORMS:
        raise ValueError(f"circular must be one of {CIRCULAR_FORMS}, not {circular!r}")
    with torch.no_grad():
        # lipcore's layers write themselves (`export` methods); torch's own modules are copied
        export = getattr(layer, "export", None)
        if callable(export):
            return export(circular)
        if isinstance(layer, (nn.ReLU, nn.Flatten, nn.Linear, nn.Conv2d)):
            return copy.deepcopy(layer)  # the export must not share (or freeze) the source's parameters
        if isinstance(layer, nn.AvgPool2d):
            if layer.divisor_override:
                k = layer.kernel_size if isinstance(layer.kernel_size, int) else layer.kernel_size[0]
                return nn.Sequential(nn.AvgPool2d(layer.kernel_size, layer.stride), Mul(k * k / layer.divisor_override))
            return layer
    raise TypeError(f"no standard-operator form for {type(layer).__name__} (FirstChannel needs its input width)")


def standard_model(loaded: LoadedModel, circular: str = "dft") -> nn.Sequential:
    """The whole network as standard torch modules, float32, eval mode, parameters frozen
    (`circular`: see `standard_layer`). The effective weights are those of the float64 copy
    (lipcore.certify.float64_model: Cayley transforms in float64), rounded once to float32."""
    model = float64_model(loaded.model) if getattr(loaded.model, "body", None) is not None else loaded.model
    mods: list[nn.Module] = []
    x = example_input(loaded, 1).to(next(model.parameters()).device, next(model.parameters()).dtype)
    with torch.no_grad():
        for layer in body_of(model):
            if isinstance(layer, FirstChannel):  # a scaled 0/1 read-out matrix of the input width
                width = x.shape[1]
                w = torch.zeros(layer.out, width)
                w[torch.arange(layer.out), torch.arange(layer.out)] = layer.scale
                mods.append(linear_op(w, None) if x.dim() == 2 else conv_op(w[:, :, None, None], None))
            else:
                mods.append(standard_layer(layer, circular))
            x = layer(x)
    net = nn.Sequential(*mods).float().eval()
    net.requires_grad_(False)
    return net


def example_input(loaded: LoadedModel, batch: int = 1) -> Tensor:
    """A (batch, *input shape) float32 tensor of zeros in model-input space."""
    spec = loaded.spec
    if spec.img_size:
        return torch.zeros(batch, spec.in_channels or 3, spec.img_size, spec.img_size)
    return torch.zeros(batch, spec.in_channels or 1)


def bound_metadata(model: nn.Module) -> dict[str, Any]:
    """What a consumer needs to certify from the logits: {"gamma", "head", ...}.

    gamma: the l2 Lipschitz bound (model-input space -> logits, or -> the LLN head's input), None
    for Plain networks. head: "lln" (with "lln_weight", the unit-norm rows actually applied,
    (classes, features)), "sqrt2" (pair bound sqrt2 * gamma) or "single" (one output: gamma).
    verified_bound: lipcore.certify.verified_bound of the network's float64 reparameterisation (an
    upper bound on its Lipschitz constant checked from the weights); a consumer certifies with
    max(gamma, verified_bound), as lipcore does. The exported operators hold those weights rounded
    to float32 (relative error ~1e-7), which this bound does not cover.
    """
    gamma = getattr(model, "gamma", None)
    head = getattr(model, "lln_head", None)
    out: dict[str, Any] = {"gamma": None if gamma is None else float(gamma)}
    if gamma is not None:
        out["verified_bound"] = float(verified_bound(model))
    if head is not None:
        with torch.no_grad():
            out["head"] = "lln"
            out["lln_weight"] = head.normalized_weight().detach().double().cpu().tolist()
    else:
        last = [m for m in model.modules() if hasattr(m, "out_features") or hasattr(m, "out")]
        width = getattr(last[-1], "out_features", getattr(last[-1], "out", 2)) if last else 2
        out["head"] = "single" if width == 1 else "sqrt2"
    return out


def export_metadata(loaded: LoadedModel, net: nn.Module | None = None) -> dict[str, Any]:
    """bound_metadata plus input normalisation, classes, spec and the radius units.

    With the exported network `net` (standard_model's float32 modules), the recorded bound is
    verified on exactly those rounded weights (lipcore.export_check: `verified_bound`, the LLN
    rows `lln_weight` as stored) and `rounding` bounds the error of running it in float32
    ({"unit", "abs", "per_input_norm"}: ||logits - exact|| <= abs + per_input_norm ||x||)."""
    spec = loaded.spec
    shape = list(example_input(loaded).shape[1:])
    bounds = bound_metadata(loaded.model)
    if net is not None and bounds["gamma"] is not None:
        bounds.update(_exported_bounds(loaded, net))
    return {
        "format": "lbdn-export/1",
        **bounds,
        "mean": list(loaded.mean),
        "std": list(loaded.std),
        "classes": list(loaded.classes),
        "input_shape": shape,
        "input": "model-input space: x_model = (x_pixel - mean) / std per channel (std all ones unless normalized)",
        "radius_units": "l2 in model-input space; pixel space = radius * min(std)",
        "spec": json.loads(spec.model_dump_json()),
    }


def _exported_bounds(loaded: LoadedModel, net: nn.Module) -> dict[str, Any]:
    parts = export_check.units(net)
    out: dict[str, Any] = {}
    if getattr(loaded.model, "lln_head", None) is not None:
        head: Any = parts[-1]
        out["lln_weight"] = head.weight.detach().double().cpu().tolist()
        out["verified_bound"] = export_check.exported_bound(parts[:-1])
    else:
        out["verified_bound"] = export_check.exported_bound(parts)
    x0 = example_input(loaded, 1)
    out["rounding"] = export_check.exported_rounding(parts, x0).as_dict()
    return out


def to_onnx(loaded: LoadedModel, path: str | Path, opset: int = 17, circular: str = "dft") -> Path:
    """Write the network as ONNX (input "x": (batch, *input shape) model-input space, output
    "logits"), with `export_metadata` as JSON under metadata_props["lbdn"]. Returns the path.

    Uses torch.onnx.export(dynamo=False), the TorchScript-based exporter: it needs only `onnx`
    (no onnxscript), and the network here is a plain feed-forward graph.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = standard_model(loaded, circular)
    x = example_input(loaded, 2)
    tmp = _tmp_name(path)
    try:
        torch.onnx.export(
            net,
            (x,),
            str(tmp),
            input_names=["x"],
            output_names=["logits"],
            opset_version=opset,
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
        proto = onnx.load(str(tmp))
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(export_metadata(loaded, net))
        proto.doc_string = "lbdn-service export: Lipschitz-bounded network, effective weights frozen"
        onnx.save(proto, str(tmp))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _tmp_name(path: Path) -> Path:
    """A hidden sibling unique to this process and thread (concurrent exports of one model), with
    the same suffix (torch.export.save wants .pt2); renamed over `path` when complete."""
    return path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp{path.suffix}")


def to_torch(loaded: LoadedModel, path: str | Path, circular: str = "dft") -> Path:
    """Write the network as a torch.export program (.pt2; `torch.export.load(path).module()(x)`),
    dynamic batch, with `export_metadata` in the extra file "lbdn.json". Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = standard_model(loaded, circular)
    x = example_input(loaded, 2)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    program = torch.export.export(net, (x,), dynamic_shapes={"input": {0: batch}})
    tmp = _tmp_name(path)
    try:
        meta = json.dumps(export_metadata(loaded, net))
        torch.export.save(program, str(tmp), extra_files={f"{METADATA_KEY}.json": meta})
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The `export_metadata` dict stored in an exported ONNX file."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    raise ValueError(f"{path} has no '{METADATA_KEY}' metadata: not an lbdn export")


def certify_onnx(path: str | Path, x: Tensor | Any) -> Any:
    """Certificates (lipcore.certify.Certificate) of inputs x (model-input space, as given, any
    float dtype) from an ONNX export alone: onnxruntime gives the float32 logits, the file's
    metadata gives gamma, the bound verified on the file's weights, the head and the float32
    forward's rounding bound (which, with the cast of x to float32, comes off each margin)."""
    import numpy as np
    import onnxruntime as ort  # type: ignore[import-untyped]

    meta = read_onnx_metadata(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x64 = torch.as_tensor(np.asarray(x, dtype=np.float64))
    logits = session.run(["logits"], {"x": x64.numpy().astype(np.float32)})[0]
    w = torch.tensor(meta["lln_weight"], dtype=torch.float64) if meta.get("head") == "lln" else None
    verified = meta.get("verified_bound")
    rnd = meta.get("rounding")
    if meta["gamma"] is None or verified is None or rnd is None:
        used = math.nan  # an export without a verified bound and rounding model certifies nothing
        model = RoundingModel(0.0, 0.0, 0.0)
    else:
        used = BoundReport(float(meta["gamma"]), float(verified)).used  # as lipcore.certify.certify_model
        model = RoundingModel(float(rnd["unit"]), float(rnd["abs"]), float(rnd["per_input_norm"]))
    err = model.error(x64) if len(x64) else torch.zeros(0, dtype=torch.float64)
    return certify(torch.from_numpy(logits), used, lln_weight=w, error=err, error_slope=model.e1)


__all__ = [
    "bound_metadata",
    "certify_onnx",
    "export_metadata",
    "read_onnx_metadata",
    "standard_layer",
    "standard_model",
    "to_onnx",
    "to_torch",
]

"""Export a trained network for deployment: effective weights frozen into standard operators.

`to_onnx(loaded, path)` writes an ONNX file (onnxruntime runs it), `to_torch(loaded, path)` a
`torch.export` program (.pt2; `torch.export.load` runs it without lipcore). Both carry the metadata
a consumer needs to certify (`bound_metadata` plus input normalisation, classes, spec).

What each layer becomes (all exact rewrites of the layer's own forward, from its effective weights):
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
import torch.nn.functional as F
from torch import Tensor, nn

from lipcore.checkpoint import LoadedModel

METADATA_KEY = "lbdn"  # ONNX metadata_props key / torch extra file "lbdn.json"


# ---- glue modules: only standard operators inside -----------------------------------------------
class Residual(nn.Module):
    """x - f(x): the SLL block's residual form (`sll_t`, `schur_q`: the block's t and SLL weights,
    for verifying the rounded block in lipcore.export_check)."""

    def __init__(self, f: nn.Module, t: tuple[float, ...] = (), q: tuple[float, ...] = ()) -> None:
        super().__init__()
        self.f = f
        self.sll_t, self.schur_q = tuple(t), tuple(q)

    def forward(self, x: Tensor) -> Tensor:
        return x - self.f(x)


class SLLFc(nn.Module):
    """x - (t * relu(x W^T + b)) W: one stored copy of W (Gemm, Relu, Mul, MatMul, Sub).
    `schur_q`: the layer's SLL weights, for verifying the rounded block (lipcore.export_check)."""

    t: Tensor

    def __init__(self, w: Tensor, b: Tensor, t: Tensor, q: tuple[float, ...] = ()) -> None:
        super().__init__()
        self.schur_q = tuple(q) or (1.0,) * len(t)
        self.weight = nn.Parameter(w.clone(), requires_grad=False)
        self.bias = nn.Parameter(b.clone(), requires_grad=False)
        self.register_buffer("t", t.clone())

    def forward(self, x: Tensor) -> Tensor:
        return x - (F.relu(F.linear(x, self.weight, self.bias)) * self.t) @ self.weight


class Mul(nn.Module):
    """x * c for a constant c (the sum-pool's factor after AvgPool2d)."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = float(c)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.c


class SandwichCore(nn.Module):
    """Linear/conv B, bias, ReLU, then linear/conv A (no bias): the sandwich layer's two halves.
    `scale` (folded into B) and `psi` are kept to verify the rounded halves (lipcore.export_check)."""

    def __init__(self, b: nn.Module, a: nn.Module, scale: float = 1.0, psi: tuple[float, ...] = ()) -> None:
        super().__init__()
        self.b, self.a = b, a
        self.scale, self.psi = float(scale), tuple(psi)

    def forward(self, x: Tensor) -> Tensor:
        return self.a(F.relu(self.b(x)))


class CircularDFT(nn.Module):
    """A circular convolution as real matrix products: DFT, per-frequency channel mix, inverse DFT.

    x (b, c_in, n, n) -> (b, c_out, n, n). The 2-D rfft is two products with constant cos/sin
    matrices (along W to n // 2 + 1 bins, then along H), the layer's per-frequency complex maps
    (F, c_out, c_in) become one batched real MatMul pair per frequency, and the inverse is the same
    in reverse (irfft's Hermitian weights folded into its matrices). Only MatMul, Add, Sub, Mul,
    Reshape and Transpose: no DFT operator, no complex tensors, exact in exact arithmetic.
    """

    cw: Tensor
    sw: Tensor
    ch: Tensor
    sh: Tensor
    ar: Tensor
    ai: Tensor
    mr: Tensor
    mi: Tensor
    bias: Tensor | None

    def __init__(self, m: Tensor, n: int, bias: Tensor | None, scale: float = 1.0) -> None:
        super().__init__()
        half = n // 2 + 1
        k = torch.arange(n, dtype=torch.float64)
        ang_w = 2 * math.pi * torch.outer(k, k[:half]) / n  # (n, half)
        ang_h = 2 * math.pi * torch.outer(k, k) / n  # (n, n)
        weights = torch.full((half,), 2.0, dtype=torch.float64)
        weights[0] = 1.0
        if n % 2 == 0:
            weights[-1] = 1.0
        m = scale * m.to(torch.complex128)
        f32 = lambda t: t.to(torch.float32).contiguous()  # noqa: E731
        self.register_buffer("cw", f32(torch.cos(ang_w)))
        self.register_buffer("sw", f32(-torch.sin(ang_w)))  # rfft along W: imaginary part
        self.register_buffer("ch", f32(torch.cos(ang_h)))
        self.register_buffer("sh", f32(torch.sin(ang_h)))
        self.register_buffer("ar", f32(weights[:, None] * torch.cos(ang_w.T) / n**2))
        self.register_buffer("ai", f32(-weights[:, None] * torch.sin(ang_w.T) / n**2))
        self.register_buffer("mr", f32(m.real.transpose(1, 2)))  # (F, in, out)
        self.register_buffer("mi", f32(m.imag.transpose(1, 2)))
        self.register_buffer("bias", None if bias is None else f32(bias.detach()).view(1, -1, 1, 1))
        # (not `self.half`: that is nn.Module's method)
        self.n, self.bins, self.c_in, self.c_out = n, half, m.shape[2], m.shape[1]

    def forward(self, x: Tensor) -> Tensor:
        n, half = self.n, self.bins
        xr, xi = x @ self.cw, x @ self.sw  # (b, c, n, half)
        yr = self.ch @ xr + self.sh @ xi  # full DFT along H: (cos - i sin)(xr + i xi)
        yi = self.ch @ xi - self.sh @ xr
        yr = yr.permute(2, 3, 0, 1).reshape(n * half, -1, self.c_in)  # (F, b, c_in), f = h * half + w
        yi = yi.permute(2, 3, 0, 1).reshape(n * half, -1, self.c_in)
        zr = yr @ self.mr - yi @ self.mi
        zi = yr @ self.mi + yi @ self.mr
        zr = zr.reshape(n, half, -1, self.c_out).permute(2, 3, 0, 1)  # (b, c_out, n, half)
        zi = zi.reshape(n, half, -1, self.c_out).permute(2, 3, 0, 1)
        ur = self.ch @ zr - self.sh @ zi  # inverse DFT along H (1/n folded into ar, ai)
        ui = self.ch @ zi + self.sh @ zr
        y = ur @ self.ar + ui @ self.ai  # inverse rfft along W
        return y if self.bias is None else y + self.bias


# ---- weights ------------------------------------------------------------------------------------
# The builders below are public: each layer's `export()` method writes itself with them.
def linear_op(w: Tensor, b: Tensor | None) -> nn.Linear:
    """nn.Linear holding copies of w (out, in) and b (out,) (no bias if None)."""
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        lin.weight.copy_(w)
        if b is not None:
            lin.bias.copy_(b)
    return lin


def conv_op(w: Tensor, b: Tensor | None, padding: int = 0, stride: int = 1) -> nn.Conv2d:
    """nn.Conv2d holding copies of w (out, in, kh, kw) and b (out,), zero padding."""
    conv = nn.Conv2d(
        w.shape[1], w.shape[0], (w.shape[2], w.shape[3]), stride=stride, padding=padding, bias=b is not None
    )
    with torch.no_grad():
        conv.weight.copy_(w)
        if b is not None and conv.bias is not None:
            conv.bias.copy_(b)
    return conv


def circular_kernel(m: Tensor, n: int, in_channels: int) -> Tensor:
    """The full n x n spatial kernel (c_out, c_in, n, n), real, of per-frequency maps m (F, o, i).

    The circular map x -> irfft2(m rfft2(x)) is applied to a unit impulse at pixel (0, 0) of each
    input channel; its response r_c is the kernel of a circular *convolution*. Conv2d cross-
    correlates, and with circular padding P = n // 2 before and n - 1 - P after, w[u, v] =
    r[(P - u) mod n, (P - v) mod n]. Computed in float64.
    """
    from lipcore.layers.fourier import apply_response

    eye = torch.zeros(in_channels, in_channels, n, n, dtype=torch.float64)
    eye[torch.arange(in_channels), torch.arange(in_channels), 0, 0] = 1.0
    r = apply_response(m.to(torch.complex128), eye, n)  # (c_in, c_out, n, n): response to channel c
    r = r.transpose(0, 1)  # (c_out, c_in, n, n)
    p = n // 2
    idx = (p - torch.arange(n)) % n
    return r[:, :, idx][:, :, :, idx]


CIRCULAR_FORMS = ("dft", "conv")


def circular_op(
    m: Tensor, n: int, in_channels: int, bias: Tensor | None, scale: float = 1.0, form: str = "dft"
) -> nn.Module:
    """A circular convolution with per-frequency maps m (or one pointwise map, m.dim() == 2)."""
    if m.dim() == 2:  # 1x1: the same real matrix at every frequency
        return conv_op((scale * m.double())[:, :, None, None].float(), bias)
    if form == "dft":
        return CircularDFT(m, n, bias, scale)
    k = (scale * circular_kernel(m, n, in_channels)).float()
    p = n // 2
    return nn.Sequential(nn.CircularPad2d((p, n - 1 - p, p, n - 1 - p)), conv_op(k, bias))


def strided_op(layer: Any, inner: nn.Module) -> nn.Module:
    """`inner` after PixelUnshuffle(2) for a stride-2 FourierConv layer (its space-to-depth step)."""
    return nn.Sequential(nn.PixelUnshuffle(2), inner) if layer.stride == 2 else inner


def as_float64(t: Tensor) -> Tensor:
    """t detached in float64 (complex128 for complex t): exports fold scales in at this precision."""
    return t.detach().to(torch.complex128 if t.is_complex() else torch.float64)


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
    from lipcore.certify import float64_model
    from lipcore.layers import FirstChannel
    from lipcore.models.base import body_of

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
        from lipcore.certify import verified_bound

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
    from lipcore import export_check as C

    parts = C.units(net)
    out: dict[str, Any] = {}
    if getattr(loaded.model, "lln_head", None) is not None:
        head: Any = parts[-1]
        out["lln_weight"] = head.weight.detach().double().cpu().tolist()
        out["verified_bound"] = C.exported_bound(parts[:-1])
    else:
        out["verified_bound"] = C.exported_bound(parts)
    x0 = example_input(loaded, 1)
    out["rounding"] = C.exported_rounding(parts, x0).as_dict()
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

    from lipcore.certify import BoundReport, RoundingModel, certify

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

"""Layer families as records: what a model needs to build itself from one family of layers.

A family declares its constructors (conv, FC with activation, last linear, or a whole Toy body),
its hidden widths and its capabilities; models (lipcore.models) ask the family instead of branching
on its name, and `lipcore.spec` validates `layer` against this registry. Adding a family is one
module with its layers plus one `register_family(LayerFamily(...))`:

    register_family(LayerFamily("Spectral", conv=SpectralConv, fc=SpectralFc, lin=SpectralLin))

This module imports no torch (the API validates specs without it), so the built-in families below
name their constructors as "module:attribute" strings, imported the first time a model is built.
A family defined elsewhere (a plug-in, a test) passes the classes themselves.

Constructor signatures (the models call them with keywords after the sizes):
- conv(in_channels, out_channels, kernel_size, *, stride=1, scale=1.0, input_size) -> Module
  (b, in, N, N) -> (b, out, N/stride, N/stride); `input_size` is N.
- fc(in_features, out_features, *, scale=1.0) -> Module, with its activation (ReLU) inside,
  unless the family gives `activation` (then a separate module follows every conv and fc).
- lin(in_features, out_features, *, scale=1.0) -> Module: the last layer, no activation.
- toy(in_features, out_features, *, width, depth, scale) -> list of Modules: the whole Toy body,
  for families whose layers cannot change width (SLL); other families build Toy from fc and lin.
Each is 1-Lipschitz from `scale * x` to its output for a `bounded` family.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Constructor = Callable[..., Any] | str
Capability = Literal["conv", "fc", "lin", "toy"]
CAPABILITIES: tuple[Capability, ...] = ("conv", "fc", "lin", "toy")


@dataclass(frozen=True)
class LayerFamily:
    """One layer family. Widths are the paper's, chosen so families have similar parameter counts.

    toy_width: hidden width of the Toy network. kwl_hidden: first hidden FC width of KWL per unit
    width (times 1/2/4 for small/medium/large). downsample: how KWL halves the resolution,
    "stride" (stride-2 convolutions) or "pool" (stride-1 convolutions and a 4x4 sum-pool / 4).
    bounded: False for an unconstrained family (no gamma, nothing to certify).
    """

    name: str
    conv: Constructor | None = None
    fc: Constructor | None = None
    lin: Constructor | None = None
    toy: Constructor | None = None
    activation: Constructor | None = None
    bounded: bool = True
    toy_width: int = 128
    kwl_hidden: int = 640
    downsample: Literal["stride", "pool"] = "stride"
    description: str = ""

    @property
    def capabilities(self) -> frozenset[str]:
        """What the family can build: "conv", "fc", "lin", and "toy" (its own body or fc + lin)."""
        caps = {c for c in ("conv", "fc", "lin") if getattr(self, c) is not None}
        if self.toy is not None or {"fc", "lin"} <= caps:
            caps.add("toy")
        return frozenset(caps)

    def constructor(self, kind: str) -> Callable[..., Any]:
        """The constructor for `kind` ("conv", "fc", "lin", "toy", "activation"), imported if named
        by a "module:attribute" string. Raises ValueError if the family has none."""
        ref = getattr(self, kind, None) if kind in (*CAPABILITIES, "activation") else None
        if ref is None:
            raise ValueError(f"layer family {self.name!r} has no {kind!r} constructor")
        if isinstance(ref, str):
            module, _, attr = ref.partition(":")
            ref = getattr(importlib.import_module(module), attr)
        return ref

    def as_dict(self) -> dict[str, Any]:
        """The family as JSON-able facts (no constructors): what `GET /v1/catalog` lists."""
        return {
            "name": self.name,
            "bounded": self.bounded,
            "capabilities": sorted(self.capabilities),
            "toy_width": self.toy_width,
            "kwl_hidden": self.kwl_hidden,
            "downsample": self.downsample,
            "description": self.description,
        }


_FAMILIES: dict[str, LayerFamily] = {}


def register_family(family: LayerFamily) -> LayerFamily:
    """Add `family` to the registry (registration order is the order listed in messages).
    Registering the same record again is a no-op; a different record under a taken name is an error."""
    old = _FAMILIES.get(family.name)
    if old is not None and old != family:
        raise ValueError(f"layer family {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def get_family(name: str | LayerFamily) -> LayerFamily:
    """The registered family called `name` (a LayerFamily is returned as is)."""
    if isinstance(name, LayerFamily):
        return name
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown layer family {name!r}; registered: {family_names()}") from None


def family_names(capabilities: frozenset[str] | set[str] = frozenset()) -> tuple[str, ...]:
    """Registered family names, in registration order, that have every capability asked for."""
    return tuple(n for n, f in _FAMILIES.items() if set(capabilities) <= f.capabilities)


def families() -> tuple[LayerFamily, ...]:
    """Every registered family, in registration order."""
    return tuple(_FAMILIES.values())


# ---- the paper's families ------------------------------------------------------------------------
register_family(
    LayerFamily(
        "Sandwich",
        conv="lipcore.layers.sandwich:SandwichConv",
        fc="lipcore.layers.sandwich:SandwichFc",
        lin="lipcore.layers.sandwich:SandwichLin",
        # the sandwich layer's extra A block matches the others' parameter counts at smaller widths
        toy_width=86,
        kwl_hidden=512,
        description="sandwich layers (Wang & Manchester 2023), SDP-tight",
    )
)
register_family(
    LayerFamily(
        "Orthogon",
        conv="lipcore.layers.orthogon:OrthogonConv",
        fc="lipcore.layers.orthogon:OrthogonFc",
        lin="lipcore.layers.orthogon:OrthogonLin",
        description="Cayley orthogonal layers (Trockman & Kolter 2021)",
    )
)
register_family(
    LayerFamily(
        "Aol",
        conv="lipcore.layers.aol:AolConv",
        fc="lipcore.layers.aol:AolFc",
        lin="lipcore.layers.aol:AolLin",
        # AOL convolutions are zero-padded and stride 1 only
        downsample="pool",
        description="almost-orthogonal layers (Prach & Lampert 2022)",
    )
)
register_family(
    LayerFamily(
        "SLL",
        toy="lipcore.layers.sll:sll_toy_body",
        description="SDP-based residual blocks (Araujo et al. 2023)",
    )
)
register_family(
    LayerFamily(
        "Plain",
        conv="lipcore.layers.plain:plain_conv",
        fc="lipcore.layers.plain:plain_linear",
        lin="lipcore.layers.plain:plain_linear",
        activation="torch.nn:ReLU",
        bounded=False,
        description="unconstrained convolutions and linear layers (no bound)",
    )
)

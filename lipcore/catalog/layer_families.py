"""Layer families as records: what a model needs to know to build itself from one family of layers.

A family declares the kinds of constructor it has (conv, FC with activation, last linear, a whole
Toy body, a separate activation), its hidden widths and whether it is bounded; models
(lipcore.models) ask the family instead of branching on its name, and the spec validates `layer`
against this registry. The record is torch-free (the API validates specs without torch); the
layer module registers its constructors against the family's name, as timm's `register_model`
does. Adding a family is one module with its layers plus one record:

    register_family(LayerFamily("Spectral", kinds=frozenset({"conv", "fc", "lin"})))

    @register_layer("Spectral", "conv")
    class SpectralConv(nn.Module): ...

Constructor signatures (the models call them with keywords after the sizes):
- conv(in_channels, out_channels, kernel_size, *, stride=1, scale=1.0, input_size) -> Module
  (b, in, N, N) -> (b, out, N/stride, N/stride); `input_size` is N.
- fc(in_features, out_features, *, scale=1.0) -> Module, with its activation (ReLU) inside,
  unless the family has an `activation` (then a separate module follows every conv and fc).
- lin(in_features, out_features, *, scale=1.0) -> Module: the last layer, no activation.
- toy(in_features, out_features, *, width, depth, scale) -> list of Modules: the whole Toy body,
  for families whose layers cannot change width (SLL); other families build Toy from fc and lin.
- activation() -> Module.
Each is 1-Lipschitz from `scale * x` to its output for a `bounded` family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from lipcore.catalog.registry import Registry

Kind = Literal["conv", "fc", "lin", "toy", "activation"]
KINDS: tuple[Kind, ...] = ("conv", "fc", "lin", "toy", "activation")
C = TypeVar("C", bound=Callable[..., Any])


@dataclass(frozen=True)
class LayerFamily:
    """One layer family. Widths are the paper's, chosen so families have similar parameter counts.

    kinds: the constructors its layer module registers (a subset of KINDS). toy_width: hidden width
    of the Toy network. kwl_hidden: first hidden FC width of KWL per unit width (times 1/2/4 for
    small/medium/large). downsample: how KWL halves the resolution, "stride" (stride-2
    convolutions) or "pool" (stride-1 convolutions and a 4x4 sum-pool / 4). bounded: False for an
    unconstrained family (no gamma, nothing to certify).
    """

    name: str
    kinds: frozenset[str]
    bounded: bool = True
    toy_width: int = 128
    kwl_hidden: int = 640
    downsample: Literal["stride", "pool"] = "stride"
    description: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"layer family {self.name!r}: unknown kinds {sorted(unknown)}; expected some of {KINDS}")

    @property
    def capabilities(self) -> frozenset[str]:
        """What the family can build: "conv", "fc", "lin", and "toy" (its own body or fc + lin)."""
        caps = set(self.kinds) - {"activation"}
        if {"fc", "lin"} <= caps:
            caps.add("toy")
        return frozenset(caps)

    def constructor(self, kind: str) -> Callable[..., Any]:
        """The constructor its layer module registered for `kind`. Raises ValueError if the family
        has none, or if its module was not imported (importing lipcore.layers registers the paper's)."""
        if kind not in self.kinds:
            raise ValueError(f"layer family {self.name!r} has no {kind!r} constructor")
        try:
            return _CONSTRUCTORS[self.name, kind]
        except KeyError:
            raise ValueError(
                f"layer family {self.name!r}: no {kind!r} constructor registered; import its layer module"
            ) from None

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


FAMILIES: Registry[LayerFamily] = Registry("layer family")
_CONSTRUCTORS: dict[tuple[str, str], Callable[..., Any]] = {}


def register_family(family: LayerFamily) -> LayerFamily:
    """Add `family` to the registry (registration order is the order listed in messages).
    Registering the same record again is a no-op; a different record under a taken name is an error."""
    return FAMILIES.add(family.name, family)


def register_layer(family: str, kind: Kind) -> Callable[[C], C]:
    """Decorator for a layer class or function: the `kind` constructor of the registered `family`."""
    if kind not in get_family(family).kinds:
        raise ValueError(
            f"layer family {family!r} declares no {kind!r} constructor (its kinds: {sorted(get_family(family).kinds)})"
        )

    def wrap(constructor: C) -> C:
        old = _CONSTRUCTORS.get((family, kind))
        if old is not None and old is not constructor:
            raise ValueError(f"layer family {family!r} already has a {kind!r} constructor: {old!r}")
        _CONSTRUCTORS[family, kind] = constructor
        return constructor

    return wrap


def get_family(name: str | LayerFamily) -> LayerFamily:
    """The registered family called `name` (a LayerFamily is returned as is)."""
    return name if isinstance(name, LayerFamily) else FAMILIES.get(name)


def family_names(capabilities: frozenset[str] | set[str] = frozenset()) -> tuple[str, ...]:
    """Registered family names, in registration order, that have every capability asked for."""
    return tuple(f.name for f in FAMILIES.records() if set(capabilities) <= f.capabilities)


def families() -> tuple[LayerFamily, ...]:
    """Every registered family, in registration order."""
    return FAMILIES.records()


# ---- the paper's families (their layers register in lipcore/layers/<module>.py) -------------------
_CONV_FC_LIN = frozenset({"conv", "fc", "lin"})
register_family(
    LayerFamily(
        "Sandwich",
        _CONV_FC_LIN,
        # the sandwich layer's extra A block matches the others' parameter counts at smaller widths
        toy_width=86,
        kwl_hidden=512,
        description="sandwich layers (Wang & Manchester 2023), SDP-tight",
    )
)
register_family(LayerFamily("Orthogon", _CONV_FC_LIN, description="Cayley orthogonal layers (Trockman & Kolter 2021)"))
register_family(
    LayerFamily(
        "Aol",
        _CONV_FC_LIN,
        # AOL convolutions are zero-padded and stride 1 only
        downsample="pool",
        description="almost-orthogonal layers (Prach & Lampert 2022)",
    )
)
register_family(LayerFamily("SLL", frozenset({"toy"}), description="SDP-based residual blocks (Araujo et al. 2023)"))
register_family(
    LayerFamily(
        "Plain",
        _CONV_FC_LIN | {"activation"},
        bounded=False,
        description="unconstrained convolutions and linear layers (no bound)",
    )
)

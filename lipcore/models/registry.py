"""Model registry (timm-style): architectures register a builder under their card's name.

The card (lipcore.catalog.model_cards) says what the model accepts; `@register_model(name)` in the
model's module adds how to build it. Importing lipcore.models registers the paper's four."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lipcore.catalog.model_cards import get_card
from lipcore.catalog.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from lipcore.spec import ExperimentSpec

Builder = Callable[["ExperimentSpec"], "nn.Module"]
BUILDERS: Registry[Builder] = Registry("model builder", sort=True)


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator: `@register_model("KWL")` on a function spec -> nn.Module; the model needs a card
    (lipcore.catalog.model_cards) saying what it accepts."""
    get_card(name)

    def wrap(fn: Builder) -> Builder:
        BUILDERS.add(name, fn)
        return fn

    return wrap


def list_models() -> list[str]:
    """Names of the registered builders, sorted."""
    return list(BUILDERS.names())


def build(spec: ExperimentSpec) -> nn.Module:
    """Build the (randomly initialised) network of `spec` on the CPU in the default dtype.

    The spec must be resolved (input shape and classes known; see `ExperimentSpec.resolved`).
    The returned module has `.gamma` (float, or None for an unbounded family such as Plain) and
    `.lln_head` (the LinearNormalized last layer, or None).
    """
    if not spec.resolved:
        raise ValueError(
            f"spec for dataset {spec.dataset!r} does not know its input shape/classes yet; "
            "resolve it against the data first (lipcore.data.resolve_spec)"
        )
    return BUILDERS.get(spec.model)(spec)

"""Spec fields beyond the paper's: a record per field, validated with the spec and offered as a flag.

`ExperimentSpec` declares the paper's options as pydantic fields; a field added later (by a
plug-in, a test, a new training option) is one `SpecField` record and one `register_field` call
(lipcore.catalog.spec), after which specs accept, default and validate it, their JSON schema lists
it, and the paper's command line and `lbdn submit` offer it as a flag (lipcore.catalog.flags):

    register_field(SpecField("warmup", Annotated[int, Field(ge=0)], 0, "epochs of linear lr warm-up"))

Code reads it as `spec.warmup` (an attribute like any other; `getattr` for mypy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter

from lipcore.catalog.registry import Registry


@dataclass(frozen=True)
class Flag:
    """How a spec field appears on the command line: an optional short option (`-m`), `names`
    listing its allowed values in the help text (the registries' names, read when the parser is
    built), or `hidden` for fields the command line does not set (filled from the dataset)."""

    short: str | None = None
    names: Callable[[], tuple[str, ...]] | None = None
    hidden: bool = False


@dataclass(frozen=True)
class SpecField:
    """One registered spec field: `annotation` is what pydantic validates (e.g. `int`,
    `Literal["a", "b"]`, `Annotated[int, Field(ge=0)]`); `default` is used when a spec omits it."""

    name: str
    annotation: Any
    default: Any
    description: str = ""
    flag: Flag = Flag()
    adapter: TypeAdapter[Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "adapter", TypeAdapter(self.annotation))
        self.adapter.validate_python(self.default)  # a bad default fails at registration, not per spec

    def json_schema(self) -> dict[str, Any]:
        """The field's JSON schema (as the spec's schema lists it)."""
        schema = dict(self.adapter.json_schema())
        schema["default"] = self.default
        if self.description:
            schema["description"] = self.description
        return schema


FIELDS: Registry[SpecField] = Registry("spec field")


def add_field(spec_field: SpecField) -> SpecField:
    """The registry's part of `lipcore.catalog.spec.register_field` (which also checks the name)."""
    return FIELDS.add(spec_field.name, spec_field)


def extension_fields() -> tuple[SpecField, ...]:
    """Every registered spec field, in registration order."""
    return FIELDS.records()

"""Command-line flags generated from the spec's fields: the paper's `python -m lipcore` and
`lbdn submit` both call `add_spec_flags` and `spec_fields`, so a new spec field (built in, or
registered with `register_field`) is a flag of both without further edits.

Flags keep the paper's names (`--train_batch_size`, `--LLN`: a field's alias wins) and its short
options (`-m`, `-d`, `-g`, `-s`, `-e`, from the field's `Flag`). Every flag defaults to None and
only flags given on the command line become spec fields, so the spec's own defaults and each
model's forced settings apply exactly as for a spec sent as JSON (DNN's LLN is not contradicted by
an absent --LLN). Booleans are switches (`store_true`), Literal fields offer their choices.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic.fields import FieldInfo

from lipcore.catalog.fields import Flag, extension_fields
from lipcore.catalog.spec import ExperimentSpec


@dataclass(frozen=True)
class _Option:
    """One spec field as a flag: its field name (the parsed namespace's `dest`), annotation,
    default, help text and Flag marker."""

    name: str
    flag_name: str
    annotation: Any
    default: Any
    description: str
    flag: Flag


def _marker(info: FieldInfo) -> Flag:
    return next((m for m in info.metadata if isinstance(m, Flag)), Flag())


def spec_options() -> Iterator[_Option]:
    """The spec's fields that are flags: built-in ones in declaration order, then registered ones."""
    for name, info in ExperimentSpec.model_fields.items():
        yield _Option(name, info.alias or name, info.annotation, info.default, info.description or "", _marker(info))
    for f in extension_fields():
        yield _Option(f.name, f.name, f.annotation, f.default, f.description, f.flag)


def _base_type(annotation: Any) -> Any:
    """`int` of `int | None` or `Annotated[int, ...]`; Literal types are returned as they are."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _base_type(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    return annotation


def _help(option: _Option) -> str:
    text = option.description
    if option.flag.names is not None:
        text += f" ({', '.join(option.flag.names())})"
    if option.default is not None and option.default is not False and "(default" not in text:
        text += f" (default {option.default})"
    return text.replace("%", "%%")  # argparse formats help with %


def add_spec_flags(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add a flag for every spec field that is not hidden (e.g. in_channels, read from the data)."""
    for option in spec_options():
        if option.flag.hidden:
            continue
        names = [n for n in (option.flag.short, f"--{option.flag_name}") if n]
        kind = _base_type(option.annotation)
        if kind is bool:
            group.add_argument(*names, dest=option.name, action="store_true", default=None, help=_help(option))
        elif typing.get_origin(kind) is typing.Literal:
            choices = list(typing.get_args(kind))
            group.add_argument(*names, dest=option.name, choices=choices, default=None, help=_help(option))
        else:
            convert = kind if kind in (int, float) else str
            group.add_argument(*names, dest=option.name, type=convert, default=None, help=_help(option))


def spec_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The spec fields of parsed flags: the flags that were given, by field name."""
    fields = {}
    for option in spec_options():
        value = getattr(args, option.name, None)
        if not option.flag.hidden and value is not None:
            fields[option.name] = value
    return fields


def flag_names() -> set[str]:
    """Every option string of the spec's flags (`-m`, `--model`, ...)."""
    p = argparse.ArgumentParser(add_help=False)
    add_spec_flags(p)
    return {s for a in p._actions for s in a.option_strings}

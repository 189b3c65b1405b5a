"""Command-line flags for `TrainConfig` fields, and the small parsers the sub-commands share.

A field's flag takes its type from the field's annotation and its help from the field's declared description
(`mwnet.methods.options.option`), so a config field, or a weight-net option, is declared in one place only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any

from mwnet.cli import CLIError
from mwnet.experiment.config import TrainConfig
from mwnet.methods.cmwnet_sl import CMWNetSLOptions
from mwnet.methods.options import field_types

_TYPES = field_types(TrainConfig)
_DOCS = {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(TrainConfig)}
#: The fields TrainConfig inherits from the weight-net methods' options (mwnet, cmwnet, cmwnet-sl).
WEIGHT_NET_FIELDS = tuple(f.name for f in dataclasses.fields(CMWNetSLOptions))


def flag(name: str) -> str:
    """The flag of a field name: `meta_lr` → `--meta-lr`."""
    return "--" + name.replace("_", "-")


def add_field_flag(parser: Any, name: str, help: str | None = None) -> None:
    """Add `--NAME` for TrainConfig field NAME (dest NAME, default None: absent means "keep the preset's value").

    Booleans get `--NAME / --no-NAME`; the help is the field's description unless `help` is given.
    """
    kind = _scalar(_TYPES[name])
    text = (help or _DOCS[name]).replace("%", "%%")  # argparse formats help with %
    if kind is bool:
        parser.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
    else:
        metavar = {int: "N", float: "X"}.get(kind, name.split("_")[-1].upper())
        parser.add_argument(flag(name), dest=name, type=kind, metavar=metavar, help=text)


def field_doc(name: str) -> str:
    """The declared description of TrainConfig field `name`."""
    return _DOCS[name]


def key_values(items: list[str], option: str) -> dict[str, Any]:
    """`KEY=VALUE` items (VALUE is JSON, or else text) as a dict, keys with `-` read as `_`."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"{option} must look like KEY=VALUE, got {item!r}")
        try:
            values[key.strip().replace("-", "_")] = json.loads(text)
        except json.JSONDecodeError:
            values[key.strip().replace("-", "_")] = text
    return values


def names(text: str) -> list[str]:
    """The comma-separated names in `text`, blanks dropped."""
    return [name.strip() for name in text.split(",") if name.strip()]


def print_line(line: str) -> None:
    print(line, flush=True)


def _scalar(annotation: Any) -> type:
    """The Python type a flag's text converts to: int for `int | None`, str for a Literal of strings, ..."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return type(typing.get_args(annotation)[0])
    return annotation

"""Type-checked keyword options for dataclasses: one checker for method options and training configs.

Values arrive from presets, JSON files and command lines; each is checked against the field's annotation (and a
`Literal`'s choices) so that a typo or a wrong type fails with one line naming the field, before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any


def coerce_value(annotation: Any, value: Any, name: str) -> Any:
    """`value` converted to `annotation` (int → float, list → tuple), or ValueError naming `name`."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        members = typing.get_args(annotation)
        if value is None and type(None) in members:
            return None
        errors = []
        for member in members:
            if member is type(None):
                continue
            try:
                return coerce_value(member, value, name)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if len(errors) == 1 else f"{name} has the wrong type: {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if not any(value == c and type(value) is type(c) for c in choices):
            raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(coerce_value(item, v, name) for v in value)
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported option type {annotation!r} for {name}")  # a programming error, not a user's


def field_types(cls: type) -> dict[str, Any]:
    """Field name → resolved annotation of a dataclass (works under `from __future__ import annotations`)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def build_options(cls: type, values: Mapping[str, Any], what: str) -> Any:
    """`cls(**values)` with every value type-checked; unknown keys are a ValueError listing the known ones."""
    types_ = field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        known = ", ".join(types_) or "none"
        raise ValueError(f"{what} has no option {unknown[0]!r} (options: {known})")
    return cls(**{k: coerce_value(types_[k], v, f"{what} option {k!r}") for k, v in values.items()})

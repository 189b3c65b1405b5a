"""Options declared once: a dataclass field carries its type, default, check and the one line `--help` shows.

Values arrive from presets, JSON files and command lines; each is checked against the field's annotation (and a
`Literal`'s choices) and then against the field's declared `Check`, so that a typo, a wrong type or an impossible
value fails with one line naming the field, before any work starts. Method options (`MWNetOptions`, ...) and the
training config (`TrainConfig`) use the same machinery.

    @dataclass(frozen=True)
    class Options:
        meta_lr: float = option(1e-3, "the weight net's learning rate", check=POSITIVE)
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    """A constraint on a value: `holds(value)`, or else "NAME must be REQUIREMENT, got VALUE"."""

    holds: Callable[[Any], bool]
    requirement: str

    def require(self, value: Any, name: str) -> None:
        """ValueError naming `name` unless the check holds for `value`."""
        if not self.holds(value):
            raise ValueError(f"{name} must be {self.requirement}, got {_shown(value)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


POSITIVE_INT = Check(lambda v: _is_int(v) and v >= 1, "a positive integer")
# Hyper-parameters are finite: an infinite lr or weight decay is a typo, not a setting (NaN fails every comparison).
POSITIVE = Check(lambda v: math.isfinite(v) and v > 0, "positive and finite")
NON_NEGATIVE = Check(lambda v: math.isfinite(v) and v >= 0, ">= 0 and finite")
# A layer width: positive, and small enough that the layer can be allocated (the paper's weight net: 100).
WIDTH = Check(lambda v: _is_int(v) and 1 <= v <= 2**20, "an integer in [1, 1048576]")
FINITE_POSITIVE = Check(lambda v: math.isfinite(v) and v > 0, "a finite positive number")
FINITE_NON_NEGATIVE = Check(lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")


def option(default: Any, doc: str, *, check: Check | None = None) -> Any:
    """A dataclass field with its default, its one-line description and its constraint (None values pass it).

    (A field with a mutable default is `dataclasses.field(default_factory=..., metadata={"doc": ...})`.)
    """
    return dataclasses.field(default=default, metadata={"doc": doc, "check": check})


def check_fields(options: Any, prefix: str = "") -> None:
    """ValueError naming the first field of dataclass instance `options` whose value fails its declared check."""
    for f in dataclasses.fields(options):
        check = f.metadata.get("check")
        value = getattr(options, f.name)
        if check is not None and value is not None:
            check.require(value, prefix + f.name)


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
    expected = _SCALARS.get(annotation)
    if expected is None:
        raise TypeError(f"unsupported option type {annotation!r} for {name}")  # a programming error, not a user's
    accepted, what = expected
    if isinstance(value, bool) != (annotation is bool) or not isinstance(value, accepted):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value) if annotation is float else value


# Scalar annotation → (accepted Python types, how the error names it); bools are only accepted for bool.
_SCALARS: dict[Any, tuple[tuple[type, ...], str]] = {
    bool: ((bool,), "true or false"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    str: ((str,), "a string"),
}


def field_types(cls: type) -> dict[str, Any]:
    """Field name → resolved annotation of a dataclass (works under `from __future__ import annotations`)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def build_options(cls: type, values: Mapping[str, Any], what: str) -> Any:
    """`cls(**values)` with every value type-checked and every declared check run; unknown keys are a ValueError
    listing the known ones."""
    types_ = field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        known = ", ".join(types_) or "none"
        raise ValueError(f"{what} has no option {unknown[0]!r} (options: {known})")
    options = cls(**{k: coerce_value(types_[k], v, f"{what} option {k!r}") for k, v in values.items()})
    check_fields(options, f"{what}: ")
    return options


def _shown(value: Any) -> str:
    """A value as an error message shows it: sequences as lists, strings quoted."""
    return repr(list(value)) if isinstance(value, tuple) else repr(value)

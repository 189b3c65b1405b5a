"""Training methods behind one interface (`Method`), created by name.

    from mwnet.methods import create_method, list_methods, MethodContext
    method = create_method("mwnet", model, optimizer, context, meta_lr=1e-3)
    result = method.step(x, y, x_meta, y_meta)        # a mwnet.StepResult

A new method is a `Method` subclass decorated with `@register_method("name")` in a module imported below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mwnet.methods.base import Method, MethodContext, NoOptions
from mwnet.methods.options import build_options, field_types

_REGISTRY: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a `Method` subclass available to `create_method(name, ...)`."""

    def add(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def list_methods() -> list[str]:
    """Names of the registered methods, sorted."""
    return sorted(_REGISTRY)


def method_class(name: str) -> type[Method]:
    """The class registered under `name`, or ValueError listing the known names."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r} (choose from {', '.join(list_methods())})")
    return _REGISTRY[name]


def method_options(name: str) -> dict[str, Any]:
    """Option name → annotation for method `name`."""
    return field_types(method_class(name).Options)


def create_method(name: str, model: nn.Module, optimizer: torch.optim.Optimizer, context: MethodContext,
                  **options: Any) -> Method:
    """A ready `Method`: `options` are type-checked against the method's `Options` dataclass."""
    cls = method_class(name)
    return cls(model, optimizer, context, build_options(cls.Options, options, f"method {name!r}"))


# Importing the modules registers their methods.
from mwnet.methods import (  # noqa: E402, F401
    ce,
    class_balanced,
    cmwnet,
    cmwnet_sl,
    fine_tune,
    focal,
    frozen_vnet,
    l2rw,
    mwnet,
)

__all__ = ["Method", "MethodContext", "NoOptions", "create_method", "list_methods", "method_class",
           "method_options", "register_method"]

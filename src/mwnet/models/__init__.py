"""Model registry: build any classifier by name with `create(name, in_channels=..., num_classes=...)`.

Every registered model is a plain `nn.Module` whose last layer is an `nn.Linear` at `model.classifier`, with
`forward_features(x)` returning that layer's input, so `forward(x) == classifier(forward_features(x))`.
A model of your own needs no registration on the command line: `--model module:callable` (`mwnet.models.user`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from mwnet.models.cnn import SmallCNN, cnn
from mwnet.models.mlp import MLP, mlp
from mwnet.models.resnet import BottleneckResNet, CifarResNet, resnet32, resnet50
from mwnet.models.user import UserModelError, create_user_model, is_model_spec, parse_model_spec
from mwnet.models.wrn import WideResNet, wrn28_10

__all__ = [
    "MLP",
    "BottleneckResNet",
    "CifarResNet",
    "SmallCNN",
    "UserModelError",
    "WideResNet",
    "create",
    "create_user_model",
    "is_model_spec",
    "list_models",
    "parse_model_spec",
    "register_model",
]

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

# Arguments every factory receives from `create`, whether or not its architecture needs them.
COMMON_ARGS = ("in_channels", "num_classes", "input_size")

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(
    factory: Factory | None = None, *, name: str | None = None
) -> Factory | Callable[[Factory], Factory]:
    """Register a model factory under `name` [its function name]: `@register_model` or `@register_model(name=...)`.

    The factory must take the keyword arguments `in_channels`, `num_classes` and `input_size` (plus any of its own).
    """

    def add(fn: Factory) -> Factory:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        params = inspect.signature(fn).parameters
        missing = [arg for arg in COMMON_ARGS if arg not in params]
        if missing and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            raise ValueError(f"model factory {key!r} must accept keyword argument(s): {', '.join(missing)}")
        _REGISTRY[key] = fn
        return fn

    return add if factory is None else add(factory)


def list_models() -> list[str]:
    """Names accepted by `create`, sorted."""
    return sorted(_REGISTRY)


def create(name: str, *, in_channels: int = 3, num_classes: int = 10, input_size: int = 32, **kwargs) -> nn.Module:
    """Build the registered model `name` for inputs of shape (in_channels, input_size, input_size).

    Args:
        name: one of `list_models()`.
        in_channels: image channels (1 for grey, 3 for colour) [3].
        num_classes: outputs of the final linear layer [10].
        input_size: image side in pixels; conv nets work at any size, it only picks defaults (e.g. the ResNet-50
            stem) and sizes the MLP's input [32].
        **kwargs: model-specific options (e.g. `dropout` for wrn28_10, `hidden` for mlp).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    for arg, value in (("in_channels", in_channels), ("num_classes", num_classes), ("input_size", input_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    factory = _REGISTRY[name]
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = [p for p in params if p not in COMMON_ARGS]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(
                f"model {name!r} got unexpected option(s): {', '.join(unknown)}; "
                f"it accepts: {', '.join(accepted) or 'none'}"
            )
    return factory(in_channels=in_channels, num_classes=num_classes, input_size=input_size, **kwargs)


for _factory in (resnet32, resnet50, wrn28_10, cnn, mlp):
    register_model(_factory)
del _factory

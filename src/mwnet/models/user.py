"""Your own model from the command line: `--model module:callable`.

The module is imported (the current directory is searched first, so `--model mymodels:net` finds ./mymodels.py),
the callable is looked up in it (dots reach into attributes, e.g. `mypkg.nets:Factory.small`) and called with the
keyword arguments `input_shape` (a sample's shape, e.g. (3, 32, 32) or (D,)) and `num_classes`, plus any
`--model-option KEY=VALUE`. It must return an `nn.Module` whose forward maps a batch (n, *input_shape) to logits
(n, num_classes). A timm or torchvision model is one short wrapper away:

    def resnet18(input_shape, num_classes):
        return timm.create_model("resnet18", pretrained=True, in_chans=input_shape[0], num_classes=num_classes)

Sub-modules the callable puts in eval mode (a frozen batch-norm backbone) stay in eval mode during training.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class UserModelError(ValueError):
    """`--model module:callable` could not give a usable model; the message names the spec and the problem.

    Attributes:
        spec: the "module:callable" text.
    """

    def __init__(self, spec: str, problem: str) -> None:
        self.spec = spec
        super().__init__(f"--model {spec}: {problem}")


def is_model_spec(name: str) -> bool:
    """Whether a model name is a `module:callable` spec rather than a registered model's name."""
    return ":" in name


def parse_model_spec(spec: str) -> tuple[str, str]:
    """(module, attribute path) of "module:callable"; UserModelError when either part is not a dotted name."""
    module, _, attribute = spec.partition(":")
    if not _DOTTED.fullmatch(module.strip()) or not _DOTTED.fullmatch(attribute.strip()):
        raise UserModelError(spec, "must look like module:callable, e.g. mymodels:small_net (a Python module "
                                   "importable from here and a function in it)")
    return module.strip(), attribute.strip()


def load_model_factory(spec: str) -> Callable[..., Any]:
    """Import the callable that `spec` names."""
    module_name, attribute = parse_model_spec(spec)
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UserModelError(spec, f"no module named {module_name!r} (put {module_name.replace('.', '/')}.py "
                                       f"in the current directory or on PYTHONPATH)") from None
        raise UserModelError(spec, f"importing {module_name!r} failed: {_one_line(exc)}") from None
    except Exception as exc:  # the user's module raised while importing: report it as one line
        raise UserModelError(spec, f"importing {module_name!r} failed: {_one_line(exc)}") from None
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UserModelError(spec, f"module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UserModelError(spec, f"{attribute!r} is a {type(target).__name__}, not a callable")
    return target


def create_user_model(spec: str, *, input_shape: Sequence[int], num_classes: int, **options: Any) -> nn.Module:
    """`callable(input_shape=..., num_classes=..., **options)` of `spec`, checked to be an `nn.Module`."""
    factory = load_model_factory(spec)
    shape = tuple(int(s) for s in input_shape)
    try:
        model = factory(input_shape=shape, num_classes=int(num_classes), **options)
    except Exception as exc:  # a wrong signature or the user's own error: one line naming the call
        given = ", ".join(["input_shape", "num_classes", *options])
        raise UserModelError(spec, f"calling it with ({given}) failed: {_one_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise UserModelError(spec, f"returned a {type(model).__name__}, not a torch.nn.Module")
    return model


@torch.no_grad()
def check_logits(spec: str, model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """UserModelError unless the model maps the batch `x` to logits (n, num_classes).

    Runs in eval mode, so no batch-norm statistic moves; every sub-module's mode is restored afterwards.
    """
    from mwnet.module_state import eval_mode

    with eval_mode(model):
        try:
            out = model(x)
        except Exception as exc:
            raise UserModelError(spec, f"the model fails on a batch of shape {tuple(x.shape)}: "
                                       f"{_one_line(exc)}") from None
    if not isinstance(out, torch.Tensor):
        raise UserModelError(spec, f"the model returns a {type(out).__name__}; the command line needs a tensor of "
                                   f"logits (n, {num_classes}) (the library's MetaReweighter takes any output with "
                                   f"your own loss_fn)")
    if tuple(out.shape) != (len(x), num_classes):
        raise UserModelError(spec, f"the model returns shape {tuple(out.shape)} for {len(x)} samples; expected "
                                   f"logits ({len(x)}, {num_classes})")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

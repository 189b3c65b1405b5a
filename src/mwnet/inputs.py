"""A batch as the step takes it: a tensor or a tuple of tensors (positional arguments) and its targets."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor


def as_inputs(x: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    """A batch's inputs as a tuple of positional arguments."""
    if isinstance(x, Tensor):
        return (x,)
    if isinstance(x, (tuple, list)) and x and all(isinstance(t, Tensor) for t in x):
        return tuple(x)
    raise ValueError(f"inputs must be a tensor or a non-empty tuple of tensors, got {type(x).__name__}")


def check_batch(inputs: tuple[Tensor, ...], y: Tensor, what: str) -> None:
    """ValueError unless the inputs and targets agree on a non-zero batch size."""
    n = inputs[0].shape[0] if inputs[0].dim() > 0 else 0
    if n == 0:
        raise ValueError(f"empty {what} batch")
    for t in inputs[1:]:
        if t.dim() == 0 or t.shape[0] != n:
            raise ValueError(f"{what} inputs disagree in batch size: {[tuple(t.shape) for t in inputs]}")
    if y.dim() == 0 or y.shape[0] != n:
        raise ValueError(f"{what} batch has {n} inputs but {y.shape[0] if y.dim() else 0} targets")


def map_tensors(fn: Callable[[Tensor], Tensor], value: Any) -> Any:
    """`fn` applied to every tensor in a model output: a tensor, a mapping (dict, Hugging Face `ModelOutput`),
    a list or a tuple (named tuples included), nested; anything else is returned as it is."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, Mapping):
        mapped = {k: map_tensors(fn, v) for k, v in value.items()}
        try:
            return type(value)(**mapped)
        except TypeError:
            return mapped
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(map_tensors(fn, v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(fn, v) for v in value)
    return value


def detached(output: Any) -> Any:
    """A model output with every tensor detached."""
    return map_tensors(Tensor.detach, output)


def check_class_targets(logits: Any, targets: Tensor) -> None:
    """For the default cross-entropy: integer class indices within [0, K), else ValueError naming the problem.

    Negative labels are refused rather than ignored: cross-entropy's ignore_index (−100) would train such a
    sample with loss 0 and weight it like any other.
    """
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ValueError(f"the default cross-entropy needs (n, K) logits, got "
                         f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}; "
                         "pass a loss_fn (and meta_loss_fn) that takes the model's output")
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices, got {targets.dtype}")
    low, high = (int(v) for v in torch.stack([targets.min(), targets.max()]).tolist())
    if low < 0 or high >= logits.shape[1]:
        raise ValueError(f"targets must lie in [0, {logits.shape[1]}) (the model's output has {logits.shape[1]} "
                         f"classes), got labels from {low} to {high}")


def describe(inputs: tuple[Tensor, ...], targets: Tensor) -> str:
    """'inputs float32 (12, 1, 6, 6), targets int64 (12,)': what a failing batch held."""
    shown = ", ".join(f"{t.dtype} {tuple(t.shape)} on {t.device}".replace("torch.", "") for t in inputs)
    return f"inputs {shown}; targets {str(targets.dtype).replace('torch.', '')} {tuple(targets.shape)}"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

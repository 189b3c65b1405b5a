"""A batch as the step takes it: a tensor or a tuple of tensors (positional arguments) and its targets."""

from __future__ import annotations

from collections.abc import Sequence

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

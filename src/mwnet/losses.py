"""The losses and the weight normalisation of the step (docs/algorithm.md, "Normalisation")."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]
NORMALIZATIONS: tuple[str, ...] = ("sum", "mean")


def per_sample_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy per sample, shape (n,): the default training loss."""
    return F.cross_entropy(logits, targets, reduction="none")


def mean_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy: the default meta loss."""
    return F.cross_entropy(logits, targets)


def normalize_weights(weights: Tensor, normalize: str) -> Tensor:
    """ṽ = v / Z with Z = Σ v ("sum"; Z = 1 when Σ v = 0) or Z = n ("mean"), differentiable in v."""
    if normalize == "mean":
        return weights / weights.shape[0]
    if normalize == "sum":
        total = weights.sum()
        return weights / torch.where(total == 0, torch.ones_like(total), total)
    raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")

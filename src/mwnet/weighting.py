"""The weighting function V(ℓ; Θ): a small MLP from a sample's loss to its weight in (0, 1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class MetaWeightNet(nn.Module):
    """Meta-Weight-Net: Linear(1, h) → ReLU → … → Linear(h, 1) → sigmoid.

    Args:
        hidden: width of the hidden layer [100], or a tuple of widths for a deeper net (the paper's ablation uses
            (100, 100), (10, 10), …).

    The input is a batch of per-sample losses, shape (n,) or (n, 1); the output is their weights, shape (n,).
    The losses are the *input*, not part of the classifier's graph: callers pass them detached (PAPER.md).
    """

    def __init__(self, hidden: int | Sequence[int] = 100) -> None:
        super().__init__()
        widths = (hidden,) if isinstance(hidden, int) else tuple(hidden) if isinstance(hidden, Sequence) else ()
        if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"hidden must be a positive int or a non-empty tuple of positive ints, got {hidden!r}")
        self.hidden = widths
        layers: list[nn.Module] = []
        fan_in = 1
        for width in widths:
            layers += [nn.Linear(fan_in, width), nn.ReLU()]
            fan_in = width
        layers.append(nn.Linear(fan_in, 1))
        self.layers = nn.Sequential(*layers)
        for module in self.layers:
            if isinstance(module, nn.Linear):
                # The official code initialises with Xavier-normal weights and zero biases: V starts near 0.5
                # for every loss, i.e. close to plain (half-scaled) training.
                nn.init.xavier_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, losses: Tensor) -> Tensor:
        if losses.dim() == 1:
            losses = losses.unsqueeze(1)
        elif losses.dim() != 2 or losses.shape[1] != 1:
            raise ValueError(f"losses must have shape (n,) or (n, 1), got {tuple(losses.shape)}")
        return torch.sigmoid(self.layers(losses)).squeeze(1)

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}"

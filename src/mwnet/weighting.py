"""The weighting function V(ℓ; Θ): a small MLP from a sample's loss to its weight in (0, 1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

# How the linear layers start: "default" is nn.Linear's own (the official VNet), "xavier" Xavier-normal, zero bias.
INITS: tuple[str, ...] = ("default", "xavier")


class MetaWeightNet(nn.Module):
    """Meta-Weight-Net: Linear(1, h) → ReLU → … → Linear(h, 1) → sigmoid.

    Args:
        hidden: width of the hidden layer [100], or a tuple of widths for a deeper net (the paper's ablation uses
            (100, 100), (10, 10), …).
        init: "default" keeps nn.Linear's own initialisation, as both official repositories do: weights and
            biases uniform in ±1/√fan_in (±1 for the first layer, ±0.1 for a 100-wide second layer); V then
            starts near 0.5 for small losses and drifts, up or down by chance, as the loss grows. "xavier" gives
            Xavier-normal weights and zero biases (V(0) = 0.5 exactly), the start this package used before
            ["default"].

    The input is a batch of per-sample losses, shape (n,) or (n, 1); the output is their weights, shape (n,).
    The losses are the *input*, not part of the classifier's graph: callers pass them detached
    (docs/algorithm.md, "The weighting function").
    """

    def __init__(self, hidden: int | Sequence[int] = 100, *, init: str = "default") -> None:
        super().__init__()
        widths = (hidden,) if isinstance(hidden, int) else tuple(hidden) if isinstance(hidden, Sequence) else ()
        if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"hidden must be a positive int or a non-empty tuple of positive ints, got {hidden!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        self.init = init
        self.hidden = widths
        layers: list[nn.Module] = []
        fan_in = 1
        for width in widths:
            layers += [nn.Linear(fan_in, width), nn.ReLU()]
            fan_in = width
        layers.append(nn.Linear(fan_in, 1))
        self.layers = nn.Sequential(*layers)
        if init == "xavier":
            for module in self.layers:
                if isinstance(module, nn.Linear):
                    nn.init.xavier_normal_(module.weight)
                    nn.init.zeros_(module.bias)

    def forward(self, losses: Tensor) -> Tensor:
        if losses.dim() == 1:
            losses = losses.unsqueeze(1)
        elif losses.dim() != 2 or losses.shape[1] != 1:
            raise ValueError(f"losses must have shape (n,) or (n, 1), got {tuple(losses.shape)}")
        return torch.sigmoid(self.layers(losses)).squeeze(1)

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, init={self.init!r}"

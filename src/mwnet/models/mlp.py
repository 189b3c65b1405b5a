"""A multilayer perceptron for tabular or flattened inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten, Linear-ReLU(-dropout) hidden layers, a linear classifier (logistic regression without hidden layers)."""

    def __init__(
        self, in_features: int, *, num_classes: int = 10, hidden: Sequence[int] = (256, 256), dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.in_features = in_features
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for width in hidden:
            layers += [nn.Linear(prev, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            prev = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(prev, num_classes)
        # He-normal (fan-in) for the ReLU-followed layers; the classifier keeps PyTorch's default.
        for m in self.features.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_features) rows or (N, C, H, W) images (flattened) -> (N, last hidden) features for `classifier`."""
        if x.dim() < 2 or x.shape[1:].numel() != self.in_features:
            raise ValueError(f"mlp expects {self.in_features} features per sample, got input shape {tuple(x.shape)}")
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


def mlp(
    *, in_channels: int = 3, num_classes: int = 10, input_size: int = 32, in_features: int | None = None,
    hidden: int | Sequence[int] = (256, 256), dropout: float = 0.0,
) -> MLP:
    """The MLP; `in_features` [in_channels·input_size²] is the flattened sample size, e.g. D for (N, D) tables.

    For tabular data pass `in_features=D` (or, equivalently, `in_channels=D, input_size=1`).
    """
    if in_features is None:
        in_features = in_channels * input_size * input_size
    if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
        raise ValueError(f"in_features must be a positive integer, got {in_features!r}")
    if not isinstance(hidden, (int, list, tuple)):
        raise ValueError(f"hidden must be a positive integer or a sequence of them, got {hidden!r}")
    hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
        raise ValueError(f"hidden must be a positive integer or a sequence of them, got {hidden!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    return MLP(in_features, num_classes=num_classes, hidden=hidden, dropout=dropout)

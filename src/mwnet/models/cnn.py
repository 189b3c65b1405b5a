"""A small CNN for small grey or colour images (Fashion-MNIST 28×28, digits 8×8, CIFAR 32×32): the CPU workhorse."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Conv3×3-BN-ReLU-maxpool blocks, adaptive average pooling to a fixed grid, a hidden linear layer, a classifier.

    The adaptive pooling makes the feature size independent of the input size, so any side >= 4 px works.
    `channels_last` stores the conv weights in NHWC order, which lets oneDNN pick its fast CPU kernels.
    """

    def __init__(
        self, *, in_channels: int = 1, num_classes: int = 10, channels: Sequence[int] = (16, 32), pool_size: int = 4,
        hidden: int = 128, channels_last: bool = True,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        prev = in_channels
        for c in channels:
            blocks += [nn.Conv2d(prev, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            prev = c
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(pool_size), nn.Flatten())
        self.hidden = nn.Sequential(nn.Linear(prev * pool_size * pool_size, hidden), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(hidden, num_classes)
        # He-normal (fan-in) for every ReLU-followed layer; the classifier keeps PyTorch's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d) or (isinstance(m, nn.Linear) and m is not self.classifier):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if channels_last:
            # Measured on 2 CPU cores: forward+backward of 100×1×28×28 in ~5 ms instead of ~10 ms, and the MW-Net
            # step ("forward" hypergradient) ~25 % faster. Same values up to rounding; `.to(device)` keeps the layout.
            self.to(memory_format=torch.channels_last)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, hidden) features, the input of `classifier`."""
        return self.hidden(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


def cnn(
    *, in_channels: int = 3, num_classes: int = 10, input_size: int = 32, channels: Sequence[int] = (16, 32),
    hidden: int = 128, channels_last: bool = True,
) -> SmallCNN:
    """The small CNN; `channels` sets the conv widths (one pooling block each), `hidden` the feature size."""
    if not isinstance(channels, (list, tuple)):
        raise ValueError(f"channels must be a non-empty sequence of positive integers, got {channels!r}")
    channels = tuple(channels)
    if not channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
        raise ValueError(f"channels must be a non-empty sequence of positive integers, got {channels!r}")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
    if input_size < 2 ** len(channels):
        raise ValueError(f"cnn with {len(channels)} pooling blocks needs input_size >= {2 ** len(channels)}, "
                         f"got {input_size}")
    return SmallCNN(
        in_channels=in_channels, num_classes=num_classes, channels=channels, hidden=hidden, channels_last=channels_last
    )

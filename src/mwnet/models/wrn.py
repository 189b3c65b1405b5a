"""Wide ResNet (Zagoruyko & Komodakis): pre-activation basic blocks, widened ×k, dropout between the convs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mwnet.models.resnet import init_conv_bn


class WideBlock(nn.Module):
    """BN-ReLU-conv3×3-BN-ReLU-dropout-conv3×3, plus the input (or a 1×1 conv of its activation when shapes change)."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            if stride != 1 or in_planes != planes
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(act)))))
        # The projection shortcut reads the pre-activated input, as in the authors' code.
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(nn.Module):
    """WRN-depth-k: a 3×3 stem to 16 channels, three stages of (depth−4)/6 blocks at 16k/32k/64k channels."""

    def __init__(
        self, depth: int = 28, widen_factor: int = 10, *, in_channels: int = 3, num_classes: int = 10,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got {depth!r}")
        if isinstance(widen_factor, bool) or not isinstance(widen_factor, int) or widen_factor < 1:
            raise ValueError(f"widen_factor must be a positive integer, got {widen_factor!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        n = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        layers: list[nn.Module] = []
        in_planes = 16
        for stage, planes in enumerate(widths):
            for i in range(n):
                layers.append(WideBlock(in_planes, planes, 2 if stage > 0 and i == 0 else 1, dropout))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_planes, num_classes)
        # As in the WRN code: He-normal (fan-out) convs, unit BN scales, zero linear bias.
        init_conv_bn(self)
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, 64k) pooled features, the input of `classifier`."""
        x = self.layers(self.conv1(x))
        return self.pool(F.relu(self.bn(x))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


def wrn28_10(
    *, in_channels: int = 3, num_classes: int = 10, input_size: int = 32, dropout: float = 0.0, depth: int = 28,
    widen_factor: int = 10,
) -> WideResNet:
    """WRN-28-10 (≈36.5 M parameters for 10 classes); `depth`/`widen_factor` build other sizes, e.g. WRN-16-1."""
    return WideResNet(depth, widen_factor, in_channels=in_channels, num_classes=num_classes, dropout=dropout)

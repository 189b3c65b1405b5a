"""ResNets of He et al.: the CIFAR ResNet-32 (option-A shortcuts) and the bottleneck ImageNet ResNet-50."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def init_conv_bn(model: nn.Module) -> None:
    """He-normal (fan-out) weights for every conv, unit scale and zero shift for every batch norm."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by `stride` and zero-pad the new channels, so the shortcut has no parameters."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_before = (out_planes - in_planes) // 2
        self.pad_after = out_planes - in_planes - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an option-A shortcut: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = PadShortcut(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet-(6n+2): a 3×3 stem, three stages of n basic blocks at 16/32/64 channels, global pooling."""

    def __init__(self, blocks_per_stage: int = 5, *, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers: list[nn.Module] = []
        in_planes = 16
        for stage, planes in enumerate((16, 32, 64)):
            for i in range(blocks_per_stage):
                layers.append(BasicBlock(in_planes, planes, stride=2 if stage > 0 and i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)
        # As the official MW-Net ResNet-32: He-normal weights (fan-in) on every conv and linear layer; the
        # classifier's bias keeps nn.Linear's default, uniform in ±1/√fan_in (the official code never touches it).
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, 64) pooled features, the input of `classifier`."""
        x = F.relu(self.bn1(self.conv1(x)))
        return self.pool(self.layers(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (carrying the stride, as in torchvision's "v1.5"), 1×1 expand ×4, projection shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        if stride != 1 or in_planes != out_planes:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class BottleneckResNet(nn.Module):
    """The ImageNet bottleneck ResNet (ResNet-50 for stages (3, 4, 6, 3)), trained from scratch.

    `stem="imagenet"` is the paper's 7×7/2 conv + 3×3/2 max-pool; `stem="cifar"` is a 3×3/1 conv without pooling,
    so that 32×32 inputs are not shrunk to 8×8 before the first stage. `width` is the first stage's bottleneck
    width (64 in the paper); stages use width, 2·width, 4·width, 8·width, expanded ×4.
    """

    def __init__(
        self,
        stages: tuple[int, ...] = (3, 4, 6, 3),
        *,
        in_channels: int = 3,
        num_classes: int = 1000,
        width: int = 64,
        stem: str = "imagenet",
    ) -> None:
        super().__init__()
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        elif stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
            )
        else:
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        layers: list[nn.Module] = []
        in_planes = width
        for stage, num_blocks in enumerate(stages):
            planes = width * 2**stage
            for i in range(num_blocks):
                layers.append(Bottleneck(in_planes, planes, stride=2 if stage > 0 and i == 0 else 1))
                in_planes = planes * Bottleneck.expansion
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_planes, num_classes)
        # The linear layer keeps PyTorch's default, as torchvision does.
        init_conv_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, 32·width) pooled features, the input of `classifier`."""
        return self.pool(self.layers(self.stem(x))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


def resnet32(*, in_channels: int = 3, num_classes: int = 10, input_size: int = 32) -> CifarResNet:
    """ResNet-32 for CIFAR (5 blocks per stage, ≈0.46 M parameters for 10 classes); works at any input size."""
    return CifarResNet(5, in_channels=in_channels, num_classes=num_classes)


def resnet50(
    *, in_channels: int = 3, num_classes: int = 10, input_size: int = 32, width: int = 64, stem: str | None = None
) -> BottleneckResNet:
    """ResNet-50 from scratch (no pretrained weights); the stem defaults to "cifar" below 64 px, else "imagenet"."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    if stem is None:
        stem = "cifar" if input_size < 64 else "imagenet"
    return BottleneckResNet((3, 4, 6, 3), in_channels=in_channels, num_classes=num_classes, width=width, stem=stem)

"""Models for training runs, built in code: a small CNN, an MLP and ResNet-18/34/50 (no torchvision needed).

The ResNets follow torchvision's layout and parameter names (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``fc``), so a torchvision state dict loads into them and the paper's recipe globs (``exclude: [fc]``) read the
same. The first convolution of every model (``kh*kw*in`` = 9 or 147 inputs) cannot take an ``n:m`` pattern with
``m = 8`` and stays dense by the shape rule of :func:`nmsparse.select_layers`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from nmsparse.errors import ConfigError

__all__ = ["SmallCNN", "MLP", "ResNet", "build_model", "list_models"]


class SmallCNN(nn.Module):
    """Three 3x3 conv-BN-ReLU layers (``width``, ``2*width``, ``2*width`` channels), max pool, global pool, fc.

    Sized for 8x8 digits (about 56k weights at ``width=32``), works for any image size.

    Args:
        in_channels: image channels.
        num_classes: output classes.
        width: channels of the first conv; a multiple of 8 lets every conv but the first take ``4:8-T``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))  # (B, w, H, W)
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))  # (B, 2w, H/2, W/2)
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean(dim=(2, 3)))  # global average pool -> (B, classes)


class MLP(nn.Module):
    """Flatten, two hidden ReLU layers of ``8 * width`` units, linear head. No batch norm, so DDP on the CPU
    reproduces a single process up to floating-point summation order."""

    def __init__(self, in_features: int, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        hidden = 8 * width
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc3(torch.relu(self.fc2(x)))


# ------------------------------------------------------------------------------------------------------ ResNet


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)  # stride here: torchvision v1.5
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ImageNet ResNet (He et al. 2016) with torchvision's module names.

    Args:
        block: :class:`BasicBlock` (ResNet-18/34) or :class:`Bottleneck` (ResNet-50).
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)``.
        num_classes: output classes.
        in_channels: image channels.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._stage(block, 64, layers[0], 1)
        self.layer2 = self._stage(block, 128, layers[1], 2)
        self.layer3 = self._stage(block, 256, layers[2], 2)
        self.layer4 = self._stage(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _stage(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_planes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.in_planes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self.in_planes, planes, stride, downsample)]
        self.in_planes = planes * block.expansion
        layers += [block(self.in_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512*e, H/32, W/32)
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---------------------------------------------------------------------------------------------------- registry

_Builder = Callable[[int, int, int, int], nn.Module]  # (in_channels, num_classes, image_size, width) -> model

_MODELS: dict[str, tuple[_Builder, str]] = {
    "cnn": (lambda c, k, s, w: SmallCNN(c, k, w), "3-conv CNN with batch norm (default; sized for 8x8 digits)"),
    "mlp": (lambda c, k, s, w: MLP(c * s * s, k, w), "2-hidden-layer MLP, no batch norm"),
    "resnet18": (
        lambda c, k, s, w: ResNet(BasicBlock, (2, 2, 2, 2), num_classes=k, in_channels=c),
        "ResNet-18 (11.7M parameters at 1000 classes)",
    ),
    "resnet34": (
        lambda c, k, s, w: ResNet(BasicBlock, (3, 4, 6, 3), num_classes=k, in_channels=c),
        "ResNet-34 (21.8M parameters at 1000 classes)",
    ),
    "resnet50": (
        lambda c, k, s, w: ResNet(Bottleneck, (3, 4, 6, 3), num_classes=k, in_channels=c),
        "ResNet-50 (25.6M parameters at 1000 classes)",
    ),
}


def list_models() -> dict[str, str]:
    """Model name -> one-line description."""
    return {name: description for name, (_, description) in _MODELS.items()}


def build_model(name: str, *, in_channels: int, num_classes: int, image_size: int, width: int = 32) -> nn.Module:
    """Build a model by name for images ``[in_channels, image_size, image_size]``.

    The caller seeds torch's generator first: weights are drawn from it.

    Raises:
        ConfigError: unknown model name (the message lists the known ones).

    Example:
        >>> model = build_model("cnn", in_channels=1, num_classes=10, image_size=8)
        >>> tuple(model(torch.zeros(2, 1, 8, 8)).shape)
        (2, 10)
    """
    entry = _MODELS.get(name)
    if entry is None:
        raise ConfigError(f"model must be one of {sorted(_MODELS)}, got {name!r}")
    return entry[0](in_channels, num_classes, image_size, width)

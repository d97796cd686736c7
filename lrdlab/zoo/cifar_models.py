"""CIFAR-size models trainable on a CPU in minutes: He et al. ResNet-20/32/56 and a small ViT.

The ResNets follow He et al. 2016 §4.2: a 3×3 stem with 16 channels, three stages of ``n`` basic
blocks with 16/32/64 channels (stride 2 at the start of stages 2 and 3), global average pooling and
a linear classifier; depth = 6n + 2. Shortcuts are **option A**: identity, and where the shape
changes, the input subsampled by 2 and zero-padded in channels (no parameters) — the paper's CIFAR
setting. With option A the only weight layers are convolutions and ``fc``, so every one of them is
a decomposition candidate.

Layer names match torchvision's ResNets (``conv1``, ``bn1``, ``layer1.0.conv1`` … ``fc``), so the
paper's exclusion patterns (``conv1``, ``*.downsample.*``) mean the same thing here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the channels up to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option-A shortcut cannot shrink channels ({in_channels} → {out_channels})")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - self.in_channels
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2)) if extra else x

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers plus the (option-A) shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = PadShortcut(in_channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. CIFAR ResNet of depth 6n + 2 (option-A shortcuts)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (e.g. 20, 32, 56), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        widths = (width, 2 * width, 4 * width)
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        channels = width
        stages = []
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(channels, w, stride=2 if (i > 0 and j == 0) else 1))
                channels = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out" if isinstance(m, nn.Conv2d) else "fan_in")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet20(num_classes: int = 10, **kw) -> CifarResNet:
    return CifarResNet(20, num_classes, **kw)


def resnet32(num_classes: int = 10, **kw) -> CifarResNet:
    return CifarResNet(32, num_classes, **kw)


def resnet56(num_classes: int = 10, **kw) -> CifarResNet:
    return CifarResNet(56, num_classes, **kw)


def vit_tiny(num_classes: int = 10, image_size: int = 32, patch_size: int = 4, num_layers: int = 6,
             num_heads: int = 3, hidden_dim: int = 192, mlp_dim: int = 384) -> nn.Module:
    """A small torchvision ``VisionTransformer`` for 32×32 images (≈1.8 M parameters by default)."""
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=num_layers,
                             num_heads=num_heads, hidden_dim=hidden_dim, mlp_dim=mlp_dim, num_classes=num_classes)




# --- a small bottleneck model ----------------------------------------------------------------------------


class BottleneckNet(nn.Module):
    """A 3×3 stem, stages of torchvision ``Bottleneck`` blocks, global average pooling and ``fc``.

    Layer names follow torchvision's ResNets (``conv1``, ``layer1.0.conv2``, ``…downsample.0``, ``fc``).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, planes: Sequence[int] = (16, 32, 64),
                 blocks: Sequence[int] = (1, 1, 1), stem: int = 32, stem_stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem, 3, stride=stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        width = stem
        for i, (p, n) in enumerate(zip(planes, blocks)):
            layers = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                down = None
                if stride != 1 or width != p * Bottleneck.expansion:
                    down = nn.Sequential(nn.Conv2d(width, p * Bottleneck.expansion, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(p * Bottleneck.expansion))
                layers.append(Bottleneck(width, p, stride=stride, downsample=down))
                width = p * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.num_stages = len(planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def bottleneck_net(num_classes: int = 10, in_channels: int = 3, **kw: Any) -> BottleneckNet:
    """A small Bottleneck ResNet (≈0.2 M parameters by default) for accuracy studies on a CPU."""
    return BottleneckNet(num_classes=num_classes, in_channels=in_channels, **kw)

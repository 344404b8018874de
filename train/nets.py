"""Backbones for 48-112 px faces, all behind one shape: a backbone maps images to a dense
feature map (N, D, h, w); :class:`FaceNet` pools it and applies a linear head. Self-supervised
methods use ``backbone`` (dense) and ``embed`` (pooled) directly."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from fer_edge.errors import InputError


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class VGGBackbone(nn.Module):
    """Compact VGG-style net: per stage two 3x3 conv-BN-ReLU and a 2x2 max-pool."""

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        layers, c = [], in_channels
        for i, w in enumerate(widths):
            layers += [_conv_bn(c, w), _conv_bn(w, w)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.body = nn.Sequential(*layers)
        self.out_dim = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ResNetBackbone(nn.Module):
    """torchvision ResNet with a small-image stem (3x3 stride-1 conv, no max-pool)."""

    def __init__(self, depth: int = 18, in_channels: int = 1):
        super().__init__()
        net = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34}[depth](
            weights=None
        )
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
        self.body = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.layer1, net.layer2, net.layer3, net.layer4
        )
        self.out_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MobileNetV3Backbone(nn.Module):
    """torchvision MobileNetV3 with its stem taking ``in_channels`` and stride 1, since 48 px
    faces are small (the stock stride-2 stem would leave a 2x2 map)."""

    def __init__(self, variant: str = "small", in_channels: int = 1, width: float = 1.0):
        super().__init__()
        ctor = {
            "small": torchvision.models.mobilenet_v3_small,
            "large": torchvision.models.mobilenet_v3_large,
        }
        net = ctor[variant](weights=None, width_mult=width)
        stem = net.features[0][0]
        net.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, 1, 1, bias=False)
        self.body = net.features
        self.out_dim = net.features[-1].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class CompactBackbone(nn.Module):
    """Compact student CNN for 48-64 px faces (about 0.5M parameters): per stage a 3x3
    conv-BN-ReLU that widens, a depthwise-separable block, and a 2x2 max-pool. Only conv, BN,
    ReLU and max-pool, which every INT8 backend quantises end to end (no hard-swish)."""

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        layers, c = [], in_channels
        for i, w in enumerate(widths):
            layers += [
                _conv_bn(c, w),
                nn.Sequential(
                    nn.Conv2d(w, w, 3, 1, 1, groups=w, bias=False),
                    nn.BatchNorm2d(w),
                    nn.ReLU(inplace=True),
                ),
                nn.Sequential(
                    nn.Conv2d(w, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)
                ),
            ]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.body = nn.Sequential(*layers)
        self.out_dim = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


ARCHS = {
    "vgg": lambda c: VGGBackbone(c),
    "vgg_small": lambda c: VGGBackbone(c, (16, 32, 64, 128)),
    # vgg_small with its last two stages 1.5x wider: the 12 and 6 px maps make width cheap there
    # (0.63M parameters, 1.6x the FP32 latency, against 2.2x for every stage 1.25x wider).
    "vgg_medium": lambda c: VGGBackbone(c, (16, 32, 96, 192)),
    "vgg_wide": lambda c: VGGBackbone(c, (64, 128, 256, 512)),
    "resnet18": lambda c: ResNetBackbone(18, c),
    "mobilenetv3_small": lambda c: MobileNetV3Backbone("small", c),
    "mobilenetv3_small_050": lambda c: MobileNetV3Backbone("small", c, 0.5),
    "mobilenetv3_large": lambda c: MobileNetV3Backbone("large", c),
    # Distillation students (<= 1.5M parameters with a 7-class head).
    "mobilenetv3_small_075": lambda c: MobileNetV3Backbone("small", c, 0.75),
    "compact_cnn": lambda c: CompactBackbone(c),
    "compact_cnn_wide": lambda c: CompactBackbone(c, (48, 96, 192, 384)),
}


class FaceNet(nn.Module):
    """Backbone + global average pool + dropout + linear classifier."""

    def __init__(self, arch: str, num_classes: int = 7, in_channels: int = 1, dropout: float = 0.3):
        super().__init__()
        if arch not in ARCHS:
            raise InputError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
        self.arch = arch
        self.backbone = ARCHS[arch](in_channels)
        self.feat_dim = self.backbone.out_dim
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.feat_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, feat_dim)."""
        return torch.flatten(self.pool(self.backbone(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(x)))


def build(arch: str, num_classes: int = 7, in_channels: int = 1, **kw) -> FaceNet:
    return FaceNet(arch, num_classes, in_channels, **kw)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

"""Pieces the self-supervised methods share: the encoder, MLP heads and momentum (EMA) updates."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..nets import ARCHS


class Encoder(nn.Module):
    """A :mod:`nets` backbone plus global average pooling.

    ``self.backbone`` is the same module type as ``FaceNet.backbone``, so its ``state_dict`` is
    what ``fer-edge train --init`` loads."""

    def __init__(self, arch: str, in_channels: int):
        super().__init__()
        self.backbone = ARCHS[arch](in_channels)
        self.out_dim = self.backbone.out_dim

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map (N, D, h, w)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, D)."""
        return self.backbone(x).mean(dim=(2, 3))


def mlp(in_dim: int, hidden: int, out_dim: int, last_bn: bool = False) -> nn.Sequential:
    """Linear-BN-ReLU-Linear, the projector/predictor of SimCLR, MoCo v2, BYOL and FRA."""
    layers: list[nn.Module] = [
        nn.Linear(in_dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out_dim, bias=not last_bn),
    ]
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` updated only by :func:`ema_update`, never by the optimizer."""
    import copy

    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online`` for parameters; buffers (BN
    running statistics) are copied, so they stay identical on every DDP rank."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o.detach(), 1.0 - momentum)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)


def cosine_momentum(base: float, progress: float) -> float:
    """BYOL's schedule: ``base`` at the start of training, rising to 1 along a cosine."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2

"""BYOL (Grill et al. 2020): an online network (encoder, projector, predictor) predicts the
projection of the other view made by a target network, the online network's momentum average
(momentum rising from ``momentum`` to 1 along a cosine). No negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .heads import Encoder, cosine_momentum, ema_update, frozen_copy, mlp

HELP = "BYOL: online/target networks, predictor, no negatives"
DEFAULTS = {"dim": 256, "hidden": 1024, "momentum": 0.99}
OPTIM = {"optimizer": "sgd", "lr": 0.2, "weight_decay": 1.5e-6}
SYNC_BN = True


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, z), averaged over the batch."""
    return (2 - 2 * F.cosine_similarity(p.float(), z.float(), dim=1)).mean()


class Model(nn.Module):
    def __init__(self, arch: str, in_channels: int, cfg: dict):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(arch, in_channels)
        self.projector = mlp(self.encoder.out_dim, cfg["hidden"], cfg["dim"])
        self.predictor = mlp(cfg["dim"], cfg["hidden"], cfg["dim"])
        self.target_encoder, self.target_projector = (
            frozen_copy(self.encoder),
            frozen_copy(self.projector),
        )

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, torch.Tensor]:
        b, x = len(x1), torch.cat([x1, x2])
        p = self.predictor(self.projector(self.encoder(x)))
        with torch.no_grad():
            z = self.target_projector(self.target_encoder(x))
        loss = regression_loss(p[:b], z[b:]) + regression_loss(p[b:], z[:b])
        return {"loss": loss}

    def momentum_update(self, progress: float) -> None:
        m = cosine_momentum(self.cfg["momentum"], progress)
        ema_update(self.target_encoder, self.encoder, m)
        ema_update(self.target_projector, self.projector, m)

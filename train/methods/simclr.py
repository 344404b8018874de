"""SimCLR (Chen et al. 2020): one encoder and projector for both views, and the NT-Xent loss
over every other image of the global batch (gathered from all ranks) as negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from .heads import Encoder, mlp

HELP = "SimCLR: shared encoder, NT-Xent over the global batch"
DEFAULTS = {"dim": 128, "hidden": 1024, "temperature": 0.2}
OPTIM = {"optimizer": "sgd", "lr": 0.3, "weight_decay": 1e-4}
SYNC_BN = True  # global BN statistics, as the paper uses


def nt_xent_logits(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NT-Xent's pieces for this rank's pairs (z1[i], z2[i]) against the global batch: the
    unit-length anchors (2b, d) (this rank's view 1, then view 2), their logits (2b, 2g) over
    every gathered embedding (view 1 columns, then view 2) with each anchor's own column at
    -inf, and the column of each anchor's positive."""
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    a1, a2 = distributed.gather_with_grad(z1), distributed.gather_with_grad(z2)
    b, g = len(z1), len(a1)
    mine = torch.arange(b, device=z1.device) + distributed.rank() * b  # rows of this rank in a1
    anchors = torch.cat([z1, z2])
    logits = anchors @ torch.cat([a1, a2]).T / temperature  # (2b, 2g)
    self_col = torch.cat([mine, mine + g])
    logits[torch.arange(2 * b, device=z1.device), self_col] = float("-inf")
    return anchors, logits, torch.cat([mine + g, mine])


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent for this rank's pairs (z1[i], z2[i]) against all 2G - 1 other embeddings."""
    _, logits, positive = nt_xent_logits(z1, z2, temperature)
    return F.cross_entropy(logits, positive)


class Model(nn.Module):
    def __init__(self, arch: str, in_channels: int, cfg: dict):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(arch, in_channels)
        self.projector = mlp(self.encoder.out_dim, cfg["hidden"], cfg["dim"])

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.projector(self.encoder(torch.cat([x1, x2])))
        return {"loss": nt_xent(z[: len(x1)], z[len(x1) :], self.cfg["temperature"])}

    def momentum_update(self, progress: float) -> None:
        """SimCLR has no momentum network."""

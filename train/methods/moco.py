"""MoCo v2 (He et al. 2020; Chen et al. 2020): a query encoder trained by backprop, a key encoder
that is its momentum average, and a queue of past keys as negatives for the InfoNCE loss.

Symmetrised (both views are queries) as in the MoCo CIFAR demo. Shuffling BN across GPUs is
emulated on every device by encoding the keys in ``bn_splits`` interleaved groups, so a key's BN
statistics never come from the batch its query was normalised with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from .heads import Encoder, ema_update, frozen_copy, mlp

HELP = "MoCo v2: momentum key encoder, queue of negatives, InfoNCE"
DEFAULTS = {
    "dim": 128,  # projection size
    "hidden": 1024,  # projector hidden width
    "queue": 4096,  # negatives; FER-2013 has ~29k faces, so 65536 would hold stale epochs
    "momentum": 0.99,
    "temperature": 0.2,
    "bn_splits": 4,
}
OPTIM = {"optimizer": "sgd", "lr": 0.06, "weight_decay": 5e-4}  # lr per 256 images
SYNC_BN = False  # shuffled per-device BN is MoCo's answer to BN leakage; SyncBN would undo it


class Model(nn.Module):
    def __init__(self, arch: str, in_channels: int, cfg: dict):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(arch, in_channels)
        self.projector = mlp(self.encoder.out_dim, cfg["hidden"], cfg["dim"])
        self.key_encoder, self.key_projector = (
            frozen_copy(self.encoder),
            frozen_copy(self.projector),
        )
        self.register_buffer("queue", F.normalize(torch.randn(cfg["queue"], cfg["dim"]), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        s = max(1, min(int(self.cfg["bn_splits"]), len(x) // 2))
        groups = [self.key_projector(self.key_encoder(x[j::s])) for j in range(s)]
        order = torch.cat([torch.arange(j, len(x), s, device=x.device) for j in range(s)])
        k = torch.empty(len(x), groups[0].shape[1], device=x.device, dtype=groups[0].dtype)
        k[order] = torch.cat(groups)  # back to batch order
        return F.normalize(k.float(), dim=1)

    def _logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(N, 1 + queue) similarities / temperature: column 0 each query's own key, then every
        queue slot (-inf where a slot holds no key yet)."""
        pos = (q * k).sum(1, keepdim=True)
        neg = q @ self.queue.clone().T  # a copy: the queue changes before backward runs
        # Slots not yet holding a key are masked: random vectors would be trivially easy
        # negatives, and early training would pull every face onto one direction.
        empty = torch.arange(len(self.queue), device=q.device) >= self.queue_filled
        neg = neg.masked_fill(empty, float("-inf"))
        return torch.cat([pos, neg], dim=1) / self.cfg["temperature"]

    def _infonce(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        logits = self._logits(q, k)
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))

    @torch.no_grad()
    def _enqueue(self, k: torch.Tensor) -> None:
        k = distributed.gather(k)  # every rank enqueues every rank's keys: queues stay equal
        n = self.queue.shape[0]
        k = k[-n:]  # a queue shorter than one global batch keeps the newest keys
        idx = (self.queue_ptr + torch.arange(len(k), device=k.device)) % n
        self.queue[idx] = k.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + len(k)) % n)
        self.queue_filled.clamp_(min=min(n, int(self.queue_filled) + len(k)))

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, torch.Tensor]:
        b = len(x1)
        q = F.normalize(self.projector(self.encoder(torch.cat([x1, x2]))).float(), dim=1)
        k = self._keys(torch.cat([x1, x2]))
        q1, q2, k1, k2 = q[:b], q[b:], k[:b], k[b:]
        loss = (self._infonce(q1, k2) + self._infonce(q2, k1)) / 2
        if self.training:
            self._enqueue(torch.cat([k1, k2]))
        return {"loss": loss}

    def momentum_update(self, progress: float) -> None:
        m = self.cfg["momentum"]
        ema_update(self.key_encoder, self.encoder, m)
        ema_update(self.key_projector, self.projector, m)

"""FRA, facial region awareness (Gao & Patras, CVPR 2024): BYOL-style online and momentum
networks with a global branch and a local branch of N learnable region queries.

Local branch: heatmaps ``M = softmax over regions of (beta * cos(Q, F) / tau)`` for the dense
feature map F (N regions x h x w), region features ``h^m = sum_uv M[m,uv] F[:,uv] / sum_uv
M[m,uv]``, projected (and, online, predicted) like the global feature. Because region m of either
view comes from the same query, regions correspond across views without any matching.

Losses: ``L_sim(p, z) = -(lambda_c cos(p, z) + (1 - lambda_c) mean_m cos(p^m, z^m))``,
``L_c = L_sim(p1, z2) + L_sim(p2, z1)``, the region-assignment consistency
``L_r = mean_uv [CE(s_1, s^_1) + CE(s_2, s^_2)]`` between the online (s) and momentum (s^)
networks' assignments of the same view, ``L = L_c + region_weight * L_r``; optionally minus
``diversity * delta`` where ``delta = -sum_m Mbar(m) log Mbar(m)`` is the entropy of the mean
heatmap mass per region, which discourages all pixels collapsing into one region.

``tau = 1`` and ``diversity = 0`` are the paper's loss; the ``fra-mod`` method sets the proposed
variant (``tau = 1.1``, a softer assignment, and the diversity term).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .heads import Encoder, ema_update, frozen_copy, mlp

HELP = "FRA: facial region awareness, global + learnable region queries"
DEFAULTS = {
    "dim": 256,
    "hidden": 1024,
    "regions": 8,  # N learnable region queries
    "beta": 10.0,  # scale of the cosine similarities before the softmax over regions
    "tau": 1.0,  # softmax temperature on beta * cos
    "lambda_c": 0.5,  # weight of the global term in L_sim
    "region_weight": 0.1,  # weight of L_r
    "diversity": 0.0,  # lambda of the region-diversity entropy (L_mod = L - lambda delta)
    "momentum": 0.996,  # xi <- 0.996 xi + 0.004 theta, constant
}
VARIANTS = {"fra-mod": {"tau": 1.1, "diversity": 0.1}}
OPTIM = {"optimizer": "sgd", "lr": 0.2, "weight_decay": 1.5e-6}
SYNC_BN = True

EPS = 1e-6


class Regions(nn.Module):
    """Learnable region queries and the heatmaps / region features they induce."""

    def __init__(self, n: int, dim: int, beta: float, tau: float):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n, dim) * dim**-0.5)
        self.beta, self.tau = beta, tau

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, N, h, w) assignment logits beta * cos(Q, F) / tau."""
        cos = torch.einsum(
            "nd,bdhw->bnhw", F.normalize(self.queries.float(), dim=1), F.normalize(f.float(), dim=1)
        )
        return cos * (self.beta / self.tau)

    def pool(self, f: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Region features (B, N, D): heatmap-weighted means of the feature map."""
        mass = maps.sum(dim=(2, 3)).unsqueeze(-1) + EPS
        return torch.einsum("bnhw,bdhw->bnd", maps, f.float()) / mass


def _sim(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(p.float(), z.float(), dim=-1)


class Model(nn.Module):
    def __init__(self, arch: str, in_channels: int, cfg: dict):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(arch, in_channels)
        d = self.encoder.out_dim
        self.projector = mlp(d, cfg["hidden"], cfg["dim"])
        self.predictor = mlp(cfg["dim"], cfg["hidden"], cfg["dim"])
        self.regions = Regions(int(cfg["regions"]), d, cfg["beta"], cfg["tau"])
        self.local_projector = mlp(d, cfg["hidden"], cfg["dim"])
        self.local_predictor = mlp(cfg["dim"], cfg["hidden"], cfg["dim"])
        self.momentum_encoder = frozen_copy(self.encoder)
        self.momentum_projector = frozen_copy(self.projector)
        self.momentum_regions = frozen_copy(self.regions)
        self.momentum_local_projector = frozen_copy(self.local_projector)

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    def _online(self) -> tuple[nn.Module, ...]:
        return self.encoder, self.projector, self.regions, self.local_projector

    def _momentum(self) -> tuple[nn.Module, ...]:
        return (
            self.momentum_encoder,
            self.momentum_projector,
            self.momentum_regions,
            self.momentum_local_projector,
        )

    def _branches(self, nets: tuple[nn.Module, ...], x: torch.Tensor):
        encoder, projector, regions, local_projector = nets
        f = encoder.dense(x)
        logits = regions.logits(f)
        maps = logits.softmax(dim=1)
        h = regions.pool(f, maps)  # (B, N, D)
        b, n, d = h.shape
        z = projector(f.mean(dim=(2, 3)))
        zl = local_projector(h.reshape(b * n, d).to(f.dtype)).reshape(b, n, -1)
        return z, zl, logits, maps

    def region_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The online network's heatmaps (B, N, h, w) for images ``x``."""
        return self.regions.logits(self.encoder.dense(x)).softmax(dim=1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, torch.Tensor]:
        b, x = len(x1), torch.cat([x1, x2])
        z, zl, logits, maps = self._branches(self._online(), x)
        p = self.predictor(z)
        pl = self.local_predictor(zl.flatten(0, 1)).reshape(zl.shape)
        with torch.no_grad():
            zt, zlt, _, maps_t = self._branches(self._momentum(), x)
        lc = self.cfg["lambda_c"]

        def l_sim(i: slice, j: slice) -> torch.Tensor:
            glob = _sim(p[i], zt[j]).mean()
            local = _sim(pl[i], zlt[j]).mean()
            return -(lc * glob + (1 - lc) * local)

        first, second = slice(0, b), slice(b, 2 * b)
        l_c = l_sim(first, second) + l_sim(second, first)
        # CE(s, s^) per pixel, summed over the two views (each half of the batch is one view)
        ce = -(maps_t * logits.float().log_softmax(dim=1)).sum(dim=1)  # (2B, h, w)
        l_r = ce.mean(dim=(1, 2)).reshape(2, b).sum(0).mean()
        mbar = maps.mean(dim=(2, 3))  # (2B, N)
        delta = -(mbar * (mbar + EPS).log()).sum(dim=1).mean()
        loss = l_c + self.cfg["region_weight"] * l_r - self.cfg["diversity"] * delta
        return {
            "loss": loss,
            "loss_c": l_c.detach(),
            "loss_r": l_r.detach(),
            "diversity": delta.detach(),
        }

    def momentum_update(self, progress: float) -> None:
        for target, online in zip(self._momentum(), self._online(), strict=True):
            ema_update(target, online, self.cfg["momentum"])

"""AVCE: valence-arousal regression with emotion-aware contrastive learning.

A bottleneck z (``dim`` features) between the encoder and the valence/arousal regressor is
viewed twice: attentive, z_a = sparsemax(z), which keeps only the few features that matter, and
inattentive, z_n = softmax(z), which spreads weight over all of them. Both are the Euclidean and
the entropy-regularised projection of z onto the probability simplex; the seed solved each with a
convex solver per sample (1.3 s per mini-batch), here both are closed form (a sort and a cumsum,
and an exp). A shared auxiliary regressor maps each view to a VA point; the AVCE term pulls the
attentive prediction towards the main prediction and pushes the inattentive one away, with the
similarity f(x, y) = 1 - theta(x, y) / pi (theta: the angle between the two VA vectors):

    L_avce = -(E[f_pos] - alpha E[f_neg] - beta/2 E[f_pos^2] - gamma/2 E[f_neg^2])

The regression loss is MSE plus (1 - PCC) and (1 - CCC) per axis, as in the seed; the total is
``regression + weight * L_avce``. Metrics: RMSE, SAGR and CCC per axis (``fer_edge.metrics``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DEFAULTS = {
    "dim": 32,  # bottleneck features z
    "alpha": 0.5,  # weight of the negative (inattentive) similarity
    "beta": 0.005,  # quadratic penalty on the positive similarity
    "gamma": 0.5,  # quadratic penalty on the negative similarity
    "weight": 1e-3,  # of L_avce in the total loss, as in the seed
}


def sparsemax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Euclidean projection of ``z`` onto the probability simplex along ``dim`` (Martins and
    Astudillo, 2016), in closed form. Autograd through it gives sparsemax's Jacobian: the
    gradient flows to the support only, minus its mean."""
    z = z.transpose(dim, -1)
    z_sorted, _ = torch.sort(z, dim=-1, descending=True)
    k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    cumsum = z_sorted.cumsum(-1)
    support = (1 + k * z_sorted) > cumsum  # true for the first k(z) sorted entries
    k_z = support.sum(-1, keepdim=True)
    tau = (cumsum.gather(-1, k_z - 1) - 1) / k_z.to(z.dtype)
    return torch.clamp(z - tau, min=0).transpose(dim, -1)


def attentive(z: torch.Tensor) -> torch.Tensor:
    """z_a: the sparse view of the bottleneck."""
    return sparsemax(z, dim=1)


def inattentive(z: torch.Tensor) -> torch.Tensor:
    """z_n: argmin_p -<p, z> - H(p) over the simplex, whose closed form is softmax."""
    return torch.softmax(z, dim=1)


def angular_similarity(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """f(x, y) = 1 - theta(x, y) / pi per row: 1 for the same direction, 0 for opposite ones."""
    cos = F.cosine_similarity(x, y, dim=1, eps=1e-8).clamp(-1 + eps, 1 - eps)
    return 1 - torch.acos(cos) / math.pi


def avce_loss(
    pred: torch.Tensor,
    pred_attentive: torch.Tensor,
    pred_inattentive: torch.Tensor,
    alpha: float,
    beta: float,
    gamma: float,
) -> torch.Tensor:
    """The contrastive term: attentive VA predictions are positives of the main prediction,
    inattentive ones negatives."""
    pos = angular_similarity(pred_attentive, pred)
    neg = angular_similarity(pred_inattentive, pred)
    objective = (
        pos.mean()
        - alpha * neg.mean()
        - 0.5 * beta * pos.pow(2).mean()
        - 0.5 * gamma * neg.pow(2).mean()
    )
    return -objective


def _pcc_ccc(
    y: torch.Tensor, p: torch.Tensor, eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pearson and concordance correlation per column of (N, 2) tensors."""
    my, mp = y.mean(0), p.mean(0)
    vy, vp = y.var(0, unbiased=False), p.var(0, unbiased=False)
    cov = ((y - my) * (p - mp)).mean(0)
    pcc = cov / (vy.sqrt() * vp.sqrt() + eps)
    ccc = 2 * cov / (vy + vp + (my - mp) ** 2 + eps)
    return pcc, ccc


def regression_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE + 0.5 (1 - PCC) + 0.5 (1 - CCC), averaged over valence and arousal."""
    pcc, ccc = _pcc_ccc(target, pred)
    mse = F.mse_loss(pred, target, reduction="none").mean(0)
    return (mse + 0.5 * (1 - pcc) + 0.5 * (1 - ccc)).mean()


class AvceHead(nn.Module):
    """Pooled encoder features -> valence/arousal in [-1, 1], with the AVCE views of its
    bottleneck for the training loss."""

    def __init__(self, in_dim: int, cfg: dict | None = None):
        super().__init__()
        self.cfg = {**DEFAULTS, **(cfg or {})}
        dim = int(self.cfg["dim"])
        self.bottleneck = nn.Linear(in_dim, dim)
        self.regressor = nn.Linear(dim, 2)
        self.view_regressor = nn.Linear(dim, 2)  # shared by the attentive and inattentive views

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.regressor(F.relu(self.bottleneck(features))))

    def loss(self, features: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Total loss on (N, 2) VA targets, and its parts for logging."""
        z = self.bottleneck(features)
        pred = torch.tanh(self.regressor(F.relu(z)))
        reg = regression_loss(pred, target)
        contrast = avce_loss(
            pred,
            self.view_regressor(attentive(z)),
            self.view_regressor(inattentive(z)),
            self.cfg["alpha"],
            self.cfg["beta"],
            self.cfg["gamma"],
        )
        total = reg + self.cfg["weight"] * contrast
        parts = {"loss": total.item(), "regression": reg.item(), "avce": contrast.item()}
        return total, parts

"""AVCE: valence-arousal regression with emotion-aware contrastive learning.

A bottleneck z (``dim`` features) of the encoder's pooled features is viewed twice: attentive,
z_a = sparsemax(z), which keeps only the few features that matter, and inattentive,
z_n = softmax(z), which spreads weight over all of them. Both are the Euclidean and
the entropy-regularised projection of z onto the probability simplex; the seed solved each with a
convex solver per sample (1.3 s per mini-batch), here both are closed form (a sort and a cumsum,
and an exp). A shared auxiliary regressor maps each view to a VA point; the AVCE term pulls the
attentive prediction towards the main prediction and pushes the inattentive one away, with the
similarity f(x, y) = 1 - theta(x, y) / pi (theta: the angle between the two VA vectors):

    L_avce = -(E[f_pos] - alpha E[f_neg] - beta/2 E[f_pos^2] - gamma/2 E[f_neg^2])

The regression loss is MSE plus (1 - PCC) and (1 - CCC) per axis, as in the seed; the total is
``regression + ce_weight * CE + weight * L_avce``. Metrics: RMSE, SAGR and CCC per axis
(``fer_edge.metrics``).

In ``fer-edge train --method avce`` the network's linear head has K class logits followed by
valence and arousal, so the shipped bundle (and its exports) carries everything inference needs,
and the Recognizer reports valence/arousal per face. The bottleneck and the view regressor are a
training-only branch (``Objective.extra``) on the same pooled features: the contrast shapes the
shared encoder and the VA output's direction, and is dropped from the bundle. The seed put the
bottleneck in front of the regressor; a linear head keeps the bundle a plain ``FaceNet`` that every
exporter, pruner and runtime already handles.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fer_edge.data import FaceDataset
from fer_edge.errors import DatasetError
from fer_edge.metrics import VA_AXES, classification_report, va_report
from fer_edge.preprocess import PreprocessSpec

from ..objective import CrossEntropy
from ..predictor import predict_logits

HELP = (
    "valence/arousal regression + AVCE contrast, plus cross-entropy where a face has a class; "
    "--data: a label list CSV with valence,arousal columns in [-1, 1] (docs/supervised.md)"
)

DEFAULTS = {
    "dim": 32,  # bottleneck features z
    "alpha": 0.5,  # weight of the negative (inattentive) similarity
    "beta": 0.005,  # quadratic penalty on the positive similarity
    "gamma": 0.5,  # quadratic penalty on the negative similarity
    "weight": 1e-3,  # of L_avce in the total loss, as in the seed
    "ce_weight": 1.0,  # of cross-entropy on the faces with a class label (-1: none)
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


class AvceViews(nn.Module):
    """The AVCE branch beside a VA regressor: a bottleneck z of the pooled features, its attentive
    and inattentive views, and one regressor mapping each view to a VA point. Training only."""

    def __init__(self, in_dim: int, cfg: dict | None = None):
        super().__init__()
        self.cfg = {**DEFAULTS, **(cfg or {})}
        dim = int(self.cfg["dim"])
        self.bottleneck = nn.Linear(in_dim, dim)
        self.view_regressor = nn.Linear(dim, 2)  # shared by the attentive and inattentive views

    def forward(self, features: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """L_avce of the main VA prediction ``pred`` (N, 2) against the views of ``features``."""
        z = self.bottleneck(features)
        return avce_loss(
            pred,
            self.view_regressor(attentive(z)),
            self.view_regressor(inattentive(z)),
            self.cfg["alpha"],
            self.cfg["beta"],
            self.cfg["gamma"],
        )


def _va_targets(ds: FaceDataset, what: str) -> np.ndarray:
    """(N, 2) valence/arousal of ``ds`` (NaN where unknown); refuses data without them."""
    if ds.valence is None or ds.arousal is None:
        raise DatasetError(
            f"{what} {ds.source} has no valence/arousal: --method avce needs a label list CSV "
            "with 'valence' and 'arousal' columns (e.g. path,label,valence,arousal)"
        )
    va = np.stack([ds.valence, ds.arousal], axis=1).astype(np.float32)
    known = np.isfinite(va).all(axis=1)
    if known.sum() < 2:
        raise DatasetError(f"{what} {ds.source}: fewer than 2 faces have both valence and arousal")
    outside = int((np.abs(va[known]) > 1).any(axis=1).sum())
    if outside:
        raise DatasetError(
            f"{what} {ds.source}: {outside} faces have valence/arousal outside [-1, 1] (rescale "
            "AFEW-VA's -10..10 by 1/10; leave AffectNet's -2 'no value' cells empty)"
        )
    return va


class Objective(CrossEntropy):
    """Valence/arousal from the last two outputs of the head, K class logits before them; see
    :class:`fer_edge.train.objective.CrossEntropy` for the interface. Faces without both
    valence and arousal add no regression loss; faces labelled -1 add no cross-entropy."""

    mixes = False  # its valence-arousal targets: not mixed

    select = "val_ccc"

    def __init__(self, net, train, val, cfg, setup):
        va = _va_targets(train, "training data")
        _va_targets(val, "validation data")  # refused now, not after the first epoch
        super().__init__(net, train, val, cfg, setup)
        self.cfg, self.k = cfg, len(train.label_names)
        self.known = torch.from_numpy(np.isfinite(va).all(axis=1)).to(setup.device)
        self.targets = torch.from_numpy(np.nan_to_num(va)).to(setup.device)
        self.extra["views"] = AvceViews(net.feat_dim, cfg)

    @staticmethod
    def num_outputs(num_classes: int) -> int:
        return num_classes + 2

    def loss(self, x: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.net.embed(x)
        out = self.net.head(self.net.dropout(features)).float()
        logits, pred = out[:, : self.k], out[:, self.k :]
        known, labels = self.known[idx], self.labels[idx]
        zero = out.sum() * 0  # a batch without targets of a kind adds nothing, keeps the graph
        # PCC and CCC need two faces; the guards sync with the device, once per step
        reg = regression_loss(pred[known], self.targets[idx][known]) if known.sum() > 1 else zero
        ce = (
            F.cross_entropy(logits, labels, ignore_index=-1, label_smoothing=self.smoothing)
            if (labels >= 0).any()
            else zero
        )
        contrast = self.extra["views"](features.float(), pred)
        total = reg + self.cfg["ce_weight"] * ce + self.cfg["weight"] * contrast
        return {"loss": total, "regression": reg, "ce": ce, "avce": contrast}

    def evaluate(
        self, val: FaceDataset, spec: PreprocessSpec, device, net: torch.nn.Module | None = None
    ) -> dict[str, float]:
        """val_ccc (mean over the axes), and RMSE, SAGR and CCC per axis; accuracy and macro-F1
        over the faces with a class label, when there are any."""
        truth = _va_targets(val, "validation data")
        out = predict_logits(net or self.net, val.images, spec, device)
        rep = va_report(truth, out[:, self.k :])
        scores = {"val_ccc": rep["ccc"]}
        for axis in VA_AXES:
            scores.update({f"val_{m}_{axis}": v for m, v in rep[axis].items()})
        labelled = val.labels >= 0
        if labelled.any():
            cls = classification_report(
                val.labels[labelled], out[labelled, : self.k], val.label_names
            )
            scores.update(val_accuracy=cls["accuracy"], val_macro_f1=cls["macro_f1"])
        return scores

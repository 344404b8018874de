"""MIM-SPL: masked image modelling with self-paced learning, for training on noisy labels.

A supervised ``fer-edge train --method mim-spl`` objective. The network is the FaceNet being
trained (backbone + classifier head, what the bundle ships); ``extra`` holds the auxiliary
modules, trained with it and checkpointed, never shipped:

- global branch: the FaceNet's own head on the globally pooled feature map;
- local branch: the dense map average-pooled into a ``parts x parts`` grid of face regions
  (2 x 2 by default: left/right eye-brow, left/right mouth-cheek areas of an aligned face), each
  region with its own linear classifier, trained on the same targets;
- MIM branch: a random ``mask_ratio`` of the ``patch x patch`` patches of the input is set to the
  normalised mean grey, the masked face goes through the same backbone, and a light decoder
  (3x3 conv, GELU, 1x1 conv on the dense map resampled to the patch grid) predicts every patch's
  pixels; the loss is the MSE over the masked patches only. BatchNorm running statistics are not
  updated by the masked pass, so the shipped network's statistics stay those of whole faces.

Self-paced split (``end_epoch``, after every epoch from epoch ``warmup`` on; until the first
split every label is trusted): per-sample cross-entropy of the global head against the given labels, in eval mode and
without augmentation; per class, a 2-component ``GaussianMixture`` on those losses (min-max
scaled); a sample is clean when the posterior of the low-mean component exceeds ``threshold``.

Retrieval relabelling: each noisy sample's L2-normalised embedding ranks the clean gallery by
cosine similarity; the average precision of that ranking for class c (gallery items of class c
are the relevant ones) is ``AP_c = sum_i rel_c(i) * precision@i / sum_i rel_c(i)``, and the soft
label is ``AP / sum_c AP_c``. Clean samples train on their one-hot label, noisy ones on their soft
label (soft cross-entropy, both branches). The ``relabel`` setting replaces this step for
ablations: ``model`` gives a noisy sample the network's own softmax prediction (self-training),
``drop`` takes noisy samples out of the classification losses (they still train the MIM branch),
``keep`` leaves their given labels (the split then only chooses DCL's samples).

Distribution contrastive learning (clean samples only): class c keeps a diagonal Gaussian
(mu_c, sigma_c^2) of clean embeddings z (L2-normalised pooled features), set from the clean set
at each split and moved by an EMA with weight ``w = 1 - momentum`` after every step. Adding z to
class c would move it to ``mu_c' = mu_c + w d``, ``sigma_c'^2 = (1 - w)(sigma_c^2 + w d^2)``
with ``d = z - mu_c`` (the EMA's own update). The shift, normalised by ``w^2`` so it does not
depend on w's scale, is

    S_c(z) = (||mu_c' - mu_c||^2 + ||sigma_c' - sigma_c||^2) / w^2
           = ||d||^2 + ||sigma_c' - sigma_c||^2 / w^2

and ``L_dcl = CE(softmax_c(-S_c(z) / dcl_tau), y)``: a clean sample should shift its own class's
distribution less than any other class's.

Total: ``L = L_global + local_weight L_local + mim_weight L_mim + dcl_weight L_dcl``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fer_edge.errors import InputError

from ..augment import to_input
from ..objective import CrossEntropy

HELP = "MIM-SPL: masked image modelling + GMM clean/noisy split + retrieval relabelling"
DEFAULTS = {
    "warmup": 3,  # epochs on all given labels before the first clean/noisy split
    "threshold": 0.5,  # clean when the GMM posterior of the low-loss component exceeds this
    "patch": 8,  # MIM patch side in pixels (must divide --size)
    "mask_ratio": 0.4,  # fraction of the patches masked
    "mim_weight": 1.0,
    "parts": 2,  # local branch: parts x parts regions of the dense map
    "local_weight": 0.5,
    "dcl_weight": 0.1,
    "dcl_tau": 0.1,  # temperature of the softmax over classes on -shift
    "momentum": 0.9,  # EMA of the class distributions per step; w = 1 - momentum
    "relabel": "retrieval",  # what noisy samples train on: retrieval, model, drop or keep
}
RELABEL = ("retrieval", "model", "drop", "keep")

EPS = 1e-6


# --- MIM branch ---------------------------------------------------------------------------


def patch_mask(n: int, grid: int, ratio: float, device=None) -> torch.Tensor:
    """Bool (n, grid, grid): exactly ``round(ratio * grid^2)`` (at least one) patches per image,
    chosen uniformly at random (global RNG, which the engine seeds per epoch)."""
    k = max(1, round(ratio * grid * grid))
    order = torch.rand(n, grid * grid, device=device).argsort(dim=1)
    mask = torch.zeros(n, grid * grid, dtype=torch.bool, device=device)
    mask.scatter_(1, order[:, :k], True)
    return mask.view(n, grid, grid)


def mask_patches(x: torch.Tensor, mask: torch.Tensor, patch: int) -> torch.Tensor:
    """``x`` (n, C, S, S) with the masked patches set to 0, the normalised mean grey."""
    pixels = mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, None]
    return x.masked_fill(pixels, 0.0)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(n, C, S, S) -> (n, g, g, C * patch * patch), g = S // patch."""
    n, c, s, _ = x.shape
    g = s // patch
    return x.reshape(n, c, g, patch, g, patch).permute(0, 2, 4, 1, 3, 5).reshape(n, g, g, -1)


def mim_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked patches only; pred/target (n, g, g, P), mask (n, g, g)."""
    err = (pred.float() - target.float()).pow(2).mean(dim=-1)
    return (err * mask).sum() / mask.sum().clamp(min=1)


class PatchDecoder(nn.Module):
    """Dense features resampled to the patch grid -> the pixels of every patch."""

    def __init__(self, dim: int, out: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(dim, hidden, 3, padding=1), nn.GELU(), nn.Conv2d(hidden, out, 1)
        )

    def forward(self, f: torch.Tensor, grid: int) -> torch.Tensor:
        if f.shape[-2:] != (grid, grid):
            f = F.interpolate(f, size=(grid, grid), mode="bilinear", align_corners=False)
        return self.net(f).permute(0, 2, 3, 1)


@contextlib.contextmanager
def frozen_bn_statistics(module: nn.Module):
    """BatchNorm layers normalise with batch statistics but leave their running ones untouched
    (momentum 0), so masked faces do not shift the statistics the shipped model infers with."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum


# --- local branch ---------------------------------------------------------------------------


class PartHeads(nn.Module):
    """Local branch: the dense map pooled into ``parts x parts`` regions, a classifier each."""

    def __init__(self, dim: int, num_classes: int, parts: int):
        super().__init__()
        self.parts = parts
        self.heads = nn.ModuleList(nn.Linear(dim, num_classes) for _ in range(parts * parts))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> region logits (B, parts^2, K)."""
        regions = F.adaptive_avg_pool2d(f, self.parts).flatten(2)  # (B, D, parts^2)
        return torch.stack([h(regions[:, :, i]) for i, h in enumerate(self.heads)], dim=1)


# --- distribution contrastive learning ------------------------------------------------------


class ClassDistributions(nn.Module):
    """Per-class diagonal Gaussian of clean embeddings, as buffers (checkpointed, not trained)."""

    def __init__(self, num_classes: int, dim: int, momentum: float):
        super().__init__()
        self.w = 1.0 - momentum
        self.register_buffer("mean", torch.zeros(num_classes, dim))
        self.register_buffer("var", torch.ones(num_classes, dim))
        self.register_buffer("ready", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def reset(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        """Exact estimates from clean embeddings ``z`` with labels ``labels``."""
        for c in range(len(self.mean)):
            zc = z[labels == c].float()
            self.ready[c] = len(zc) > 1
            if len(zc) > 1:
                self.mean[c], self.var[c] = zc.mean(0), zc.var(0, unbiased=False)

    @torch.no_grad()
    def update(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        """One EMA step per class present in the batch (new tensors, not in-place: the step's
        loss graph still holds the old ones)."""
        mean, var = self.mean.clone(), self.var.clone()
        for c in labels.unique().tolist():
            d = z[labels == c].float() - self.mean[c]
            mean[c] = self.mean[c] + self.w * d.mean(0)
            var[c] = (1 - self.w) * (self.var[c] + self.w * d.pow(2).mean(0))
        self.mean, self.var = mean, var

    def shift(self, z: torch.Tensor) -> torch.Tensor:
        """S (B, K): how far adding each z to each class moves (mu, sigma), over w^2."""
        d = z.float()[:, None, :] - self.mean[None]  # (B, K, D)
        var_new = (1 - self.w) * (self.var[None] + self.w * d.pow(2))
        sigma_shift = (var_new + EPS).sqrt() - (self.var[None] + EPS).sqrt()
        return d.pow(2).sum(-1) + sigma_shift.pow(2).sum(-1) / self.w**2

    def contrastive_loss(self, z: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
        """CE over the classes that have a distribution, on logits -S / tau."""
        keep = self.ready[labels]
        if not keep.any():
            return z.sum() * 0.0
        logits = (-self.shift(z[keep]) / tau).masked_fill(~self.ready[None], -float("inf"))
        return F.cross_entropy(logits, labels[keep])


# --- self-paced split and retrieval relabelling ---------------------------------------------


def gmm_clean_split(
    losses: np.ndarray, labels: np.ndarray, num_classes: int, threshold: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a 2-component GMM on the (min-max scaled) losses; returns (clean mask,
    posterior of the low-mean component). A class with fewer than 2 samples or a single loss
    value has nothing to separate: all its samples count as clean."""
    from sklearn.mixture import GaussianMixture

    p_clean = np.ones(len(losses))
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        x = losses[rows].astype(np.float64)
        if len(rows) < 2 or np.ptp(x) < 1e-8:
            continue
        x = ((x - x.min()) / np.ptp(x))[:, None]
        gmm = GaussianMixture(2, max_iter=100, tol=1e-3, reg_covar=5e-4, random_state=seed)
        gmm.fit(x)
        p_clean[rows] = gmm.predict_proba(x)[:, int(np.argmin(gmm.means_[:, 0]))]
    return p_clean > threshold, p_clean


def retrieval_soft_labels(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    num_classes: int,
    chunk: int = 64,
) -> torch.Tensor:
    """Soft labels (Q, K): per query, the average precision of each class in the cosine ranking
    of the gallery, normalised to sum 1 (uniform when no class is retrieved at all)."""
    q, g = F.normalize(queries.float(), dim=1), F.normalize(gallery.float(), dim=1)
    relevant = F.one_hot(gallery_labels, num_classes).float()  # (G, K)
    ranks = torch.arange(1, len(g) + 1, device=g.device, dtype=torch.float32)[None, :, None]
    out = []
    for i in range(0, len(q), chunk):
        order = (q[i : i + chunk] @ g.T).argsort(dim=1, descending=True, stable=True)
        rel = relevant[order]  # (q, G, K): is the i-th retrieved of class k
        precision = rel.cumsum(dim=1) / ranks
        out.append((rel * precision).sum(1) / rel.sum(1).clamp(min=1))
    ap = torch.cat(out) if out else torch.zeros(0, num_classes, device=g.device)
    total = ap.sum(1, keepdim=True)
    return torch.where(total > 0, ap / total.clamp(min=EPS), 1.0 / num_classes)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against target distributions, averaged over the rows with target mass:
    an all-zero row (a dropped sample) neither counts nor dilutes the others."""
    total = -(targets * logits.float().log_softmax(dim=-1)).sum()
    return total / targets.sum().clamp(min=1.0)


class Objective(CrossEntropy):
    """See the module docstring. State between epochs: the training targets (one-hot or soft
    label per sample) and the clean mask, kept in ``state_dict`` so ``--resume`` is exact."""

    mixes = False  # its per-sample soft targets and clean split: not mixed

    def __init__(self, net, train, val, cfg, setup):
        super().__init__(net, train, val, cfg, setup)
        spec, device = setup.spec, setup.device
        self.cfg = cfg
        for key in ("threshold", "mask_ratio", "momentum"):
            if not 0 < cfg[key] < 1:
                raise InputError(f"mim-spl setting {key} must lie in (0, 1), got {cfg[key]}")
        if cfg["patch"] < 1 or spec.size % cfg["patch"]:
            raise InputError(f"mim-spl setting patch={cfg['patch']} must divide --size {spec.size}")
        if cfg["relabel"] not in RELABEL:
            raise InputError(
                f"mim-spl setting relabel must be one of {', '.join(RELABEL)}, got {cfg['relabel']!r}"
            )
        if cfg["parts"] < 1 or cfg["warmup"] < 1 or cfg["dcl_tau"] <= 0:
            raise InputError("mim-spl settings want parts >= 1, warmup >= 1 and dcl_tau > 0")
        self.device = device
        self.spec = spec
        self.images = train.images
        self.true_labels = torch.from_numpy(setup.true_labels).to(device)
        self.grid = spec.size // cfg["patch"]
        k, dim = net.head.out_features, net.feat_dim
        self.num_classes = k
        self.extra = nn.ModuleDict(
            {
                "local": PartHeads(dim, k, int(cfg["parts"])),
                "decoder": PatchDecoder(dim, spec.channels * cfg["patch"] ** 2),
                "distributions": ClassDistributions(k, dim, cfg["momentum"]),
            }
        )
        self.targets = F.one_hot(self.labels, k).float()
        self.clean = torch.ones(len(self.labels), dtype=torch.bool, device=device)
        self.split_done = False

    def _smoothed(self, targets: torch.Tensor) -> torch.Tensor:
        """Label smoothing of each target row; a dropped sample's all-zero row stays zero."""
        mass = targets.sum(1, keepdim=True)
        return targets * (1 - self.smoothing) + mass * self.smoothing / self.num_classes

    def loss(self, x: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg, net = self.cfg, self.net
        f = net.backbone(x)
        pooled = torch.flatten(net.pool(f), 1)
        targets = self._smoothed(self.targets[idx])
        l_global = soft_cross_entropy(net.head(net.dropout(pooled)), targets)
        region_logits = self.extra["local"](f)
        l_local = soft_cross_entropy(region_logits, targets[:, None].expand_as(region_logits))

        mask = patch_mask(len(x), self.grid, cfg["mask_ratio"], x.device)
        with frozen_bn_statistics(net.backbone):
            f_masked = net.backbone(mask_patches(x, mask, cfg["patch"]))
        pred = self.extra["decoder"](f_masked, self.grid)
        l_mim = mim_loss(pred, patchify(x, cfg["patch"]), mask)

        loss = l_global + cfg["local_weight"] * l_local + cfg["mim_weight"] * l_mim
        parts = {"loss_global": l_global, "loss_local": l_local, "loss_mim": l_mim}
        if self.split_done:
            clean = self.clean[idx]
            z, y = F.normalize(pooled.float(), dim=1)[clean], self.labels[idx][clean]
            dist = self.extra["distributions"]
            l_dcl = dist.contrastive_loss(z, y, cfg["dcl_tau"])
            dist.update(z.detach(), y)
            loss = loss + cfg["dcl_weight"] * l_dcl
            parts["loss_dcl"] = l_dcl
        return {"loss": loss, **parts}

    @torch.no_grad()
    def _logits_and_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Global logits and L2-normalised embeddings of every training face, eval mode, no
        augmentation."""
        self.net.eval()
        logits, z = [], []
        for i in range(0, len(self.images), 512):
            x = to_input(torch.from_numpy(self.images[i : i + 512]).to(self.device), self.spec)
            pooled = self.net.embed(x.contiguous(memory_format=torch.channels_last)).float()
            logits.append(self.net.head(pooled))
            z.append(F.normalize(pooled, dim=1))
        return torch.cat(logits), torch.cat(z)

    def end_epoch(self, epoch: int) -> dict[str, float]:
        if epoch + 1 < self.cfg["warmup"]:
            return {}
        logits, z = self._logits_and_embeddings()
        losses = F.cross_entropy(logits, self.labels, reduction="none")
        clean_np, _ = gmm_clean_split(
            losses.cpu().numpy(), self.labels.cpu().numpy(), self.num_classes, self.cfg["threshold"]
        )
        clean = torch.from_numpy(clean_np).to(self.device)
        if not clean.any():  # nothing to retrieve against: keep trusting every label
            clean[:] = True
        noisy = ~clean
        targets = F.one_hot(self.labels, self.num_classes).float()
        relabel = self.cfg["relabel"]
        if relabel == "retrieval":
            targets[noisy] = retrieval_soft_labels(
                z[noisy], z[clean], self.labels[clean], self.num_classes
            )
        elif relabel == "model":
            targets[noisy] = logits[noisy].float().softmax(1)
        elif relabel == "drop":
            targets[noisy] = 0.0  # soft cross-entropy of a zero row is zero
        self.targets, self.clean, self.split_done = targets, clean, True
        self.extra["distributions"].reset(z[clean], self.labels[clean])

        # diagnostics from the labels before noise; never used for training
        truly_clean = self.labels == self.true_labels
        kept = (clean & truly_clean).sum().item()
        record = {
            "clean_fraction": clean.float().mean().item(),
            "clean_precision": kept / max(1, clean.sum().item()),
            "clean_recall": kept / max(1, truly_clean.sum().item()),
        }
        if noisy.any() and relabel in ("retrieval", "model"):
            relabelled = targets[noisy].argmax(1) == self.true_labels[noisy]
            record["relabel_accuracy"] = relabelled.float().mean().item()
        return record

    def state_dict(self) -> dict:
        return {
            "targets": self.targets.cpu(),
            "clean": self.clean.cpu(),
            "split_done": self.split_done,
        }

    def load_state_dict(self, state: dict) -> None:
        self.targets = state["targets"].to(self.device)
        self.clean = state["clean"].to(self.device)
        self.split_done = bool(state["split_done"])

"""Contrastive strategies for facial expressions of Shu et al., "Revisiting self-supervised
contrastive learning for facial expression recognition" (BMVC 2022), on an in-batch NT-Xent base.

- FaceSwap (``faceswap``): view 2 of face i is, with probability ``swap_prob``, face i's inner
  face swapped onto another face (:mod:`..faceswap`), so the positive pair shares the
  expression but not the identity; otherwise face i itself (the reference code swaps 80% of
  positives: always-swapped positives leave no easy start, and the loss stays at chance).
- MaskFN (``maskfn``): each face gets a mouth-eye descriptor from a frozen extractor (HOG on eye
  and mouth crops located by landmarks, or ``extractor=CHECKPOINT``'s backbone); for each anchor
  the other face with the most similar descriptor, a likely false negative, is masked from the
  InfoNCE denominator.
- TimeAug (``timeaug``, clip datasets): view 2 is another frame of the same clip at most
  ``window`` frames away.
- HardNeg (``hardneg``, clip datasets): each face brings a frame of the same person at least
  ``min_gap`` frames away (or from another clip of theirs), added to every anchor's denominator:
  same identity, likely another expression, so identity cannot separate it.

Why in-batch NT-Xent rather than MoCo: the reference code builds on SimCLR, and MaskFN needs the
descriptor of every negative, which the batch has and a queue of past keys would not.
"""

from __future__ import annotations

import sys
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from fer_edge.errors import InputError
from fer_edge.preprocess import PreprocessSpec, convert_channels

from .. import distributed
from ..faceswap import to_pixels
from ..landmarks import BROWS, EYES, LIPS
from . import Views, simclr
from .heads import Encoder

HELP = "Shu et al.: NT-Xent + FaceSwap positives, MaskFN, TimeAug/HardNeg on clips"
DEFAULTS = {
    "dim": 128,
    "hidden": 1024,
    "temperature": 0.2,
    "faceswap": True,  # view 2 = the face's inner face swapped onto another face
    "maskfn": True,  # mask the most similar negative by mouth-eye descriptor
    "timeaug": False,  # view 2 = a nearby frame of the same clip (clip datasets)
    "hardneg": False,  # a distant frame of the same person as an extra negative (clip datasets)
    "window": 4,  # TimeAug: at most this many frames away
    "min_gap": 30,  # HardNeg: at least this many frames away (or another clip)
    "swap_prob": 0.8,  # FaceSwap: fraction of positives that are face swaps
    "swap_seed": 0,  # which face each face is swapped onto
    "extractor": "",  # MaskFN: a fer-edge checkpoint whose frozen backbone describes crops; "" = HOG
}
VARIANTS = {"shu-temporal": {"faceswap": False, "timeaug": True, "hardneg": True}}
OPTIM = dict(simclr.OPTIM)
SYNC_BN = simclr.SYNC_BN

CROP = (48, 24)  # (w, h) of the eye and mouth crops the descriptor sees
CROP_PAD = 0.15  # crop box margin around the part's landmarks, fraction of the box


# ------------------------------------------------------------------------------- loss


@torch.no_grad()
def most_similar_other(descriptors: torch.Tensor) -> torch.Tensor:
    """For each of this rank's faces, the global batch index of the other face whose descriptor
    is most similar (cosine): the likely false negative MaskFN removes."""
    d = F.normalize(descriptors.float(), dim=1)
    everyone = distributed.gather(d)
    sim = d @ everyone.T
    mine = torch.arange(len(d), device=d.device) + distributed.rank() * len(d)
    sim[torch.arange(len(d), device=d.device), mine] = float("-inf")
    return sim.argmax(dim=1)


def contrastive_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float,
    descriptors: torch.Tensor | None = None,
    extra: torch.Tensor | None = None,
) -> torch.Tensor:
    """NT-Xent over the global batch (as :func:`.simclr.nt_xent`), with MaskFN when
    ``descriptors`` (B, D) are given (both views of each anchor's most similar other face leave
    its denominator) and HardNeg when ``extra`` (B, dim) embeddings are given (every extra joins
    every anchor's denominator)."""
    anchors, logits, positive = simclr.nt_xent_logits(z1, z2, temperature)
    g = logits.shape[1] // 2  # the global batch: view 1 columns, then view 2
    if descriptors is not None:
        rows = torch.arange(len(logits), device=logits.device)
        other = most_similar_other(descriptors).repeat(2)
        logits[rows, other] = float("-inf")
        logits[rows, other + g] = float("-inf")
    if extra is not None:
        e = distributed.gather_with_grad(F.normalize(extra.float(), dim=1))
        logits = torch.cat([logits, anchors @ e.T / temperature], dim=1)
    return F.cross_entropy(logits, positive)


class Model(simclr.Model):
    """SimCLR's encoder and projector; the loss above."""

    def forward(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        descriptors: torch.Tensor | None = None,
        extra: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        b = len(x1)
        z = self.projector(self.encoder(torch.cat([x1, x2] + ([] if extra is None else [extra]))))
        hard = None if extra is None else z[2 * b :]
        loss = contrastive_loss(z[:b], z[b : 2 * b], self.cfg["temperature"], descriptors, hard)
        return {"loss": loss}


# ------------------------------------------------------------------ MaskFN descriptors


def part_crops(images: np.ndarray, points: np.ndarray, part: tuple[int, ...]) -> np.ndarray:
    """uint8 (N, h, w, C) crops of the box around landmarks ``part`` (both eyes and brows, or
    the lips), padded by :data:`CROP_PAD` and resized to :data:`CROP`."""
    n, h, w = images.shape[:3]
    out = np.empty((n, CROP[1], CROP[0], images.shape[3]), np.uint8)
    for i in range(n):
        p = to_pixels(points[i, list(part)], (h, w))
        lo, hi = p.min(0), p.max(0)
        pad = (hi - lo) * CROP_PAD + 1
        lo, hi = lo - pad, hi + pad
        scale = np.array(CROP) / (hi - lo)
        m = np.array([[scale[0], 0, -lo[0] * scale[0]], [0, scale[1], -lo[1] * scale[1]]])
        crop = cv2.warpAffine(images[i], m, CROP, borderMode=cv2.BORDER_REPLICATE)
        out[i] = crop.reshape(out.shape[1:])
    return out


def hog(crops: np.ndarray) -> np.ndarray:
    """HOG (8 px cells, 2x2-cell blocks, 9 orientations) of each crop's gray image."""
    descriptor = cv2.HOGDescriptor(CROP, (16, 16), (8, 8), (8, 8), 9)
    gray = [
        c if c.shape[-1] == 1 else cv2.cvtColor(c, cv2.COLOR_BGR2GRAY)[..., None] for c in crops
    ]
    return np.stack([descriptor.compute(np.ascontiguousarray(g[..., 0])) for g in gray])


@torch.no_grad()
def backbone_features(crops: np.ndarray, checkpoint: str) -> np.ndarray:
    """Pooled features of a fer-edge checkpoint's frozen backbone on the crops."""
    from ..augment import to_input
    from ..checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint, require=("backbone", "arch", "in_channels", "preprocess"))
    encoder = Encoder(state["arch"], state["in_channels"])
    encoder.backbone.load_state_dict(state["backbone"])
    spec = PreprocessSpec.from_dict(state["preprocess"])
    x = torch.from_numpy(
        np.stack(
            [convert_channels(c[..., 0] if c.shape[-1] == 1 else c, spec.channels) for c in crops]
        )
    )
    encoder.eval()
    return torch.cat(
        [encoder(to_input(x[i : i + 256], spec)) for i in range(0, len(x), 256)]
    ).numpy()


def mouth_eye_descriptors(
    images: np.ndarray, points: np.ndarray, extractor: str = ""
) -> np.ndarray:
    """float32 (N, D): eye-region and mouth descriptors, each centred on the dataset mean and
    L2-normalised, concatenated. Centring matters: HOG values are all positive, so raw cosines
    would be high for every pair and the most similar face would be picked by noise."""
    describe = hog if not extractor else (lambda c: backbone_features(c, extractor))
    parts = []
    for part in (EYES + BROWS, LIPS):
        d = describe(part_crops(images, points, part)).astype(np.float32)
        d -= d.mean(0)
        parts.append(d / (np.linalg.norm(d, axis=1, keepdims=True) + 1e-8))
    return np.concatenate(parts, axis=1)


# ----------------------------------------------------------------- clip samplers


class NearbyFrames:
    """Batch indices -> for each, another frame of the same clip at most ``window`` frames
    away, uniformly (the face itself only if its clip has no other frame in reach)."""

    def __init__(self, clip: np.ndarray, frame: np.ndarray, window: int):
        span = int(frame.max()) + window + 1  # clip * span + frame never reaches a next clip
        key = clip.astype(np.int64) * span + frame
        order = np.argsort(key, kind="stable")
        pos = np.empty_like(order)
        pos[order] = np.arange(len(order))
        lo = np.searchsorted(key[order], key - window, "left")
        hi = np.searchsorted(key[order], key + window, "right")
        self.order, self.pos, self.lo = (torch.from_numpy(a) for a in (order, pos, lo))
        self.count = torch.from_numpy(hi - lo - 1)  # the face itself is in [lo, hi)

    def __call__(self, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        count, pos = self.count[idx], self.pos[idx]
        r = self.lo[idx] + (torch.rand(len(idx), generator=g) * count).long()
        r = torch.where(count > 0, r + (r >= pos).long(), pos)
        return self.order[r]


class SwappedOrNot:
    """Batch indices -> rows of ``concat(images, swapped)`` for view 2: the face (or the frame
    ``partner`` picks) as its swap with probability ``p``, else as it is."""

    def __init__(self, n: int, p: float, partner=None):
        self.n, self.p, self.partner = n, p, partner

    def __call__(self, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        rows = idx if self.partner is None else self.partner(idx, g)
        return rows + self.n * (torch.rand(len(idx), generator=g) < self.p).long()


class DistantSameIdentity:
    """Batch indices -> for each, a uniform frame of the same identity from another clip or at
    least ``min_gap`` frames away in the same clip; faces with none get a uniformly random face
    (an ordinary negative), counted in ``without``."""

    def __init__(self, identity: np.ndarray, clip: np.ndarray, frame: np.ndarray, min_gap: int):
        order = np.lexsort((frame, clip, identity))
        pos = np.empty_like(order)
        pos[order] = np.arange(len(order))
        ident = identity[order]
        start = np.searchsorted(ident, identity, "left")
        end = np.searchsorted(ident, identity, "right")
        # clips numbered in sorted order, so that (clip rank, frame) is increasing along `order`
        new_clip = np.r_[True, clip[order][1:] != clip[order][:-1]]
        rank = np.empty_like(order)
        rank[order] = np.cumsum(new_clip)
        span = int(frame.max()) + min_gap + 1
        key = rank.astype(np.int64) * span + frame
        near_lo = np.searchsorted(key[order], key - (min_gap - 1), "left")
        near_hi = np.searchsorted(key[order], key + (min_gap - 1), "right")
        count = (end - start) - (near_hi - near_lo)
        self.without = int((count == 0).sum())
        self.order, self.start, self.near_lo, self.near, self.count = (
            torch.from_numpy(a) for a in (order, start, near_lo, near_hi - near_lo, count)
        )

    def __call__(self, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        count, near_lo = self.count[idx], self.near_lo[idx]
        u = torch.rand(len(idx), generator=g)
        r = self.start[idx] + (u * count).long()
        r = r + self.near[idx] * (r >= near_lo).long()
        fallback = (u * len(self.order)).long()
        return torch.where(count > 0, self.order[r.clamp(max=len(self.order) - 1)], fallback)


# ------------------------------------------------------------------------- prepare


def prepare(faces, cfg: dict, spec) -> Views:
    """Face swaps (view 2), mouth-eye descriptors (per sample) and clip samplers, as ``cfg``
    selects; landmarks and face swaps are computed once per dataset and cached."""
    from .. import faceswap, landmarks  # the landmark model loads only when a method needs it

    temporal = cfg["timeaug"] or cfg["hardneg"]
    if temporal and faces.clip is None:
        raise InputError(
            "timeaug/hardneg need a clip dataset (a folder with clips.csv, see fer_edge.data); "
            "set timeaug=false hardneg=false for still images"
        )
    if cfg["window"] < 1 or cfg["min_gap"] < 1 or not 0 <= cfg["swap_prob"] <= 1:
        raise InputError(
            f"shu wants window >= 1, min_gap >= 1 and swap_prob in [0, 1]; got "
            f"{cfg['window']}, {cfg['min_gap']}, {cfg['swap_prob']}"
        )
    views = Views()
    if cfg["faceswap"] or cfg["maskfn"]:
        t0 = time.perf_counter()
        points = landmarks.dataset_landmarks(faces.images)
        _log(f"landmarks of {len(faces)} faces: {time.perf_counter() - t0:.1f}s")
    if cfg["faceswap"]:
        t0 = time.perf_counter()
        swapped, _ = faceswap.swap_dataset(faces.images, points, cfg["swap_seed"])
        views.images2 = np.concatenate([faces.images, swapped])  # see SwappedOrNot
        _log(f"face swaps of {len(faces)} faces: {time.perf_counter() - t0:.1f}s")
    if cfg["maskfn"]:
        t0 = time.perf_counter()
        d = mouth_eye_descriptors(faces.images, points, cfg["extractor"])
        views.per_sample["descriptors"] = torch.from_numpy(d)
        _log(f"mouth-eye descriptors {d.shape}: {time.perf_counter() - t0:.1f}s")
    if cfg["timeaug"]:
        views.partner = NearbyFrames(faces.clip, faces.frame, cfg["window"])
    if cfg["hardneg"]:
        views.extra = DistantSameIdentity(faces.identity, faces.clip, faces.frame, cfg["min_gap"])
        if views.extra.without:
            _log(
                f"hardneg: {views.extra.without} faces have no frame of their identity "
                f"{cfg['min_gap']}+ frames away; they get a random negative"
            )
    if cfg["faceswap"]:
        views.partner = SwappedOrNot(len(faces), cfg["swap_prob"], views.partner)
    return views


def _log(msg: str) -> None:
    if distributed.rank() == 0:
        print(f"shu: {msg}", file=sys.stderr)

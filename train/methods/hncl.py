"""HNCL (heatmap neighbour contrastive learning): MoCo v2 whose positives also include the faces
with the most similar facial geometry.

Each face gets a Gaussian heatmap of its landmarks (MediaPipe face mesh, a subset of the 468
points). The queue keeps, beside each key, the heatmap of the face it came from; for every query
the ``neighbours`` queue entries whose heatmaps are most similar (cosine of the flattened maps)
are positives next to the query's own key, in a multi-positive InfoNCE (the mean of -log p over
the positives, as in the supervised contrastive loss; ``neighbour_weight`` < 1 counts each
neighbour less than the own key) whose denominator is MoCo's. Queries go
through a predictor on top of the projector; keys come from the momentum encoder and projector.

With ``heatmap_channel`` the encoder also sees the heatmap as a second input channel, stacked on
the face before augmentation so crops, flips and rotations move both together.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed
from ..landmarks import BROWS, EYES, LIPS, dataset_landmarks
from . import Views, moco
from .heads import mlp

HELP = "HNCL: MoCo v2 + predictor; landmark-heatmap nearest neighbours as extra positives"
DEFAULTS = {
    **moco.DEFAULTS,
    "neighbours": 5,  # heatmap-nearest queue entries that are positives of each query
    # weight of each neighbour positive against the own key's (1 = the plain mean over positives)
    "neighbour_weight": 1.0,
    "heatmap_side": 24,  # side of the heatmaps compared for neighbours
    "sigma": 1.0,  # Gaussian width in heatmap pixels (scaled with the side for the input channel)
    "heatmap_channel": False,  # feed gray + heatmap (2 channels) to the encoder
}
OPTIM = moco.OPTIM
SYNC_BN = moco.SYNC_BN

# The face-mesh points heatmaps are drawn from, the parts that move with expression: brows
# (raised in surprise and fear, drawn together in anger), eye contours (widened, squinted), outer
# and inner lip contours (smile, open mouth, pressed lips), all three from ..landmarks, and the
# lower face oval (jaw drop, chin raise). The nose ridge and wings are nearly rigid and anchor the rest (and wrinkle in
# disgust). The upper face oval (forehead, temples) is left out: it does not move with expression
# and lies mostly outside tight FER crops.
NOSE = (168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 97, 326, 327, 64, 294)
JAW = (234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288)
JAW += (361, 323, 454)
POINTS = BROWS + EYES + NOSE + LIPS + JAW


def heatmaps(points: np.ndarray, side: int, sigma: float, chunk: int = 256) -> np.ndarray:
    """Landmarks (N, P, 2), (x, y) in [0, 1] of the crop -> (N, side, side) float32 maps: at each
    pixel the largest of the P Gaussians (so every landmark peaks at 1 and near ones do not add
    up)."""
    centres = (np.arange(side, dtype=np.float32) + 0.5) / side  # pixel centres in [0, 1]
    width = 2 * (sigma / side) ** 2
    out = np.empty((len(points), side, side), np.float32)
    for i in range(0, len(points), chunk):
        p = points[i : i + chunk].astype(np.float32)
        gx = np.exp(-((centres - p[..., :1]) ** 2) / width)  # (n, P, side): separable Gaussian
        gy = np.exp(-((centres - p[..., 1:]) ** 2) / width)
        out[i : i + chunk] = np.einsum("npy,npx->npyx", gy, gx).max(axis=1)
    return out


def prepare(faces, cfg: dict, spec) -> Views:
    """Landmarks of every face (cached across runs), their heatmaps as the per-sample
    ``heatmap`` vectors (unit length, for cosine similarity) and, with ``heatmap_channel``, the
    faces with the heatmap stacked on as one more uint8 channel."""
    t0 = time.time()
    points = dataset_landmarks(faces.images)[:, list(POINTS)]
    t1 = time.time()
    maps = heatmaps(points, cfg["heatmap_side"], cfg["sigma"])
    views = Views(per_sample={"heatmap": F.normalize(torch.from_numpy(maps).flatten(1), dim=1)})
    if cfg["heatmap_channel"]:
        sigma = cfg["sigma"] * spec.size / cfg["heatmap_side"]  # the same width on the face
        channel = np.rint(heatmaps(points, spec.size, sigma) * 255).astype(np.uint8)
        views.images = np.concatenate([faces.images, channel[..., None]], axis=3)
    print(
        f"hncl: landmarks of {len(faces)} faces in {t1 - t0:.1f}s, heatmaps in {time.time() - t1:.1f}s",
        file=sys.stderr,
    )
    return views


class Model(moco.Model):
    def __init__(self, arch: str, in_channels: int, cfg: dict):
        super().__init__(arch, in_channels + int(cfg["heatmap_channel"]), cfg)
        self.predictor = mlp(cfg["dim"], cfg["hidden"], cfg["dim"])
        side = cfg["heatmap_side"]
        self.register_buffer("queue_heatmaps", torch.zeros(cfg["queue"], side * side))

    @torch.no_grad()
    def neighbours(self, heatmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queue slots (N, n) of the ``neighbours`` entries whose heatmaps are most similar to each
        unit-length ``heatmap`` row, and those cosine similarities; never an empty slot (n is
        smaller while the queue holds fewer keys)."""
        n = min(int(self.cfg["neighbours"]), int(self.queue_filled))
        # fp32 even under autocast: bf16 would reorder near-ties of the similarity
        with torch.autocast(heatmap.device.type, enabled=False):
            sim = heatmap.float() @ self.queue_heatmaps.T
        empty = torch.arange(len(self.queue_heatmaps), device=sim.device) >= self.queue_filled
        similarity, slots = sim.masked_fill(empty, float("-inf")).topk(n, dim=1)
        return slots, similarity

    def _multi_positive(
        self, q: torch.Tensor, k: torch.Tensor, slots: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-log p of the own key and mean -log p of the neighbour slots, each averaged over the
        batch, under MoCo's softmax over (own key, queue)."""
        log_p = self._logits(q, k).log_softmax(dim=1)
        own = -log_p[:, 0].mean()
        if slots.shape[1] == 0:
            return own, torch.zeros_like(own)
        return own, -log_p[:, 1:].gather(1, slots).mean()

    @torch.no_grad()
    def _enqueue(self, k: torch.Tensor, heatmap: torch.Tensor) -> None:
        start = self.queue_ptr.clone()  # where MoCo writes these keys
        super()._enqueue(k)
        heatmap = distributed.gather(heatmap.float())[-len(self.queue_heatmaps) :]
        slots = (start + torch.arange(len(heatmap), device=heatmap.device)) % len(
            self.queue_heatmaps
        )
        self.queue_heatmaps[slots] = heatmap

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, heatmap: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        b = len(x1)
        both = torch.cat([x1, x2])
        q = F.normalize(self.predictor(self.projector(self.encoder(both))).float(), dim=1)
        k = self._keys(both)
        q1, q2, k1, k2 = q[:b], q[b:], k[:b], k[b:]
        # neighbours are chosen by the face's heatmap, so both views of a face share them
        slots, similarity = self.neighbours(heatmap)
        own1, near1 = self._multi_positive(q1, k2, slots)
        own2, near2 = self._multi_positive(q2, k1, slots)
        own, near = (own1 + own2) / 2, (near1 + near2) / 2
        found = slots.shape[1]
        # a weighted mean over the 1 + found positives
        weight = self.cfg["neighbour_weight"] * found
        loss = (own + weight * near) / (1 + weight)
        if self.training:
            # one key per face, so the k neighbours are k faces rather than view pairs
            self._enqueue(k1, heatmap)
        return {
            "loss": loss,
            "loss_own": own,
            "loss_neighbours": near,
            # 0 while the queue is still empty (first step)
            "neighbour_similarity": similarity.mean() if found else similarity.new_zeros(()),
        }

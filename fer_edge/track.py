"""Face tracking across frames by box overlap, with per-track smoothing of the scores so a
label does not flicker between two expressions from one frame to the next."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .detect.base import iou_matrix
from .errors import InputError


@dataclass
class Track:
    id: int
    box: np.ndarray  # (4,) xyxy
    probs: np.ndarray  # (K,) smoothed probabilities
    missed: int = 0


class IouTracker:
    """Greedy IoU matching of each frame's boxes to the live tracks.

    ``smoothing`` is the weight of a track's past in its exponential moving average of the
    probabilities (0: no smoothing; 0.6 means a new frame counts 40%). A track survives
    ``max_missed`` frames without a match, so a face lost for a frame keeps its id.
    """

    def __init__(self, iou_threshold: float = 0.3, smoothing: float = 0.6, max_missed: int = 5):
        if not 0.0 <= smoothing < 1.0:
            raise InputError(f"smoothing must be in [0, 1), got {smoothing}")
        if not 0.0 < iou_threshold <= 1.0:
            raise InputError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        self.iou_threshold, self.smoothing, self.max_missed = iou_threshold, smoothing, max_missed
        self.tracks: list[Track] = []
        self._next_id = 1

    def reset(self) -> None:
        self.tracks, self._next_id = [], 1

    def update(self, boxes: np.ndarray, probs: np.ndarray) -> tuple[list[int], np.ndarray]:
        """Match this frame's ``boxes`` (N, 4) with probabilities ``probs`` (N, K);
        return each face's track id and its smoothed probabilities (N, K)."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        probs = np.asarray(probs, np.float32)
        ids = [0] * len(boxes)
        smoothed = probs.copy()
        assigned: set[int] = set()
        if self.tracks and len(boxes):
            overlap = iou_matrix(boxes, np.stack([t.box for t in self.tracks]))
            for flat in np.argsort(-overlap, axis=None):
                i, j = divmod(int(flat), len(self.tracks))
                if overlap[i, j] < self.iou_threshold:
                    break
                track = self.tracks[j]
                if ids[i] or track.id in assigned or track.probs.shape != probs[i].shape:
                    continue
                a = self.smoothing
                track.probs = a * track.probs + (1 - a) * probs[i]
                track.box, track.missed = boxes[i], 0
                ids[i], smoothed[i] = track.id, track.probs
                assigned.add(track.id)
        for track in self.tracks:
            if track.id not in assigned:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        for i in range(len(boxes)):
            if not ids[i]:
                self.tracks.append(Track(self._next_id, boxes[i], probs[i].copy()))
                ids[i] = self._next_id
                self._next_id += 1
        return ids, smoothed

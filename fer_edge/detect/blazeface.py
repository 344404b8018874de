"""MediaPipe BlazeFace face detector, run through fer-edge's own runtimes.

The model files (Apache-2.0, Google MediaPipe) ship in ``fer_edge/assets``; only the graphs are
used, with the SSD anchor decoding and weighted non-maximum suppression of MediaPipe's
``ssd_anchors_calculator`` / ``tensors_to_detections_calculator`` / ``non_max_suppression``
re-implemented here in numpy.

Variants:
- ``short``: 128x128 input, for faces within about 2 m of the camera (webcams, portraits).
- ``full``: 192x192 input, for smaller faces further away (group photos), about 3x slower.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError, RuntimeBackendError
from ..runtimes.loader import open_tflite_graph
from .base import Detection, FaceDetector, iou_matrix


@dataclass(frozen=True)
class Variant:
    file: str
    size: int
    strides: tuple[int, ...]
    # MediaPipe's interpolated_scale_aspect_ratio: 1.0 adds a second anchor per aspect ratio.
    interpolated: float
    # Default detection threshold. Short-range: 0.6, not MediaPipe's 0.5: on the sample videos
    # true faces score >= 0.70 and background blobs up to 0.58. Full-range keeps 0.5, since
    # small faces in group photos score 0.54 and up.
    min_score: float


VARIANTS = {
    "short": Variant("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 1.0, 0.6),
    "full": Variant("face_detection_full_range.tflite", 192, (4,), 0.0, 0.5),
}
RAW_SCORE_LIMIT = 100.0  # MediaPipe clips logits to this before the sigmoid
MAX_CANDIDATES = 200  # boxes above the score threshold kept for NMS; bounds the worst case


def asset_path(name: str) -> Path:
    """A model file shipped in ``fer_edge/assets``."""
    return Path(str(resources.files("fer_edge") / "assets" / name))


def ssd_anchors(size: int, strides: tuple[int, ...], interpolated: float) -> np.ndarray:
    """Anchor centres (A, 2) in [0, 1], in the order the model's outputs use."""
    anchors = []
    layer = 0
    while layer < len(strides):
        # Consecutive layers with one stride share a feature map: their anchors interleave.
        last, repeats = layer, 0
        while last < len(strides) and strides[last] == strides[layer]:
            repeats += 2 if interpolated == 1.0 else 1
            last += 1
        cells = size // strides[layer]
        centres = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        yy, xx = np.meshgrid(centres, centres, indexing="ij")
        grid = np.stack([xx.ravel(), yy.ravel()], axis=1)
        anchors.append(np.repeat(grid, repeats, axis=0))
        layer = last
    return np.concatenate(anchors).astype(np.float32)


def weighted_nms(
    boxes: np.ndarray, points: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's weighted NMS: each kept box is the score-weighted mean of the boxes that
    overlap the best remaining one, which steadies boxes between frames."""
    order = np.argsort(-scores)
    boxes, points, scores = boxes[order], points[order], scores[order]
    overlap = iou_matrix(boxes, boxes)
    alive = np.ones(len(boxes), bool)
    kept = []
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        group = alive & (overlap[i] > iou_threshold)
        group[i] = True
        w = scores[group][:, None]
        box = (boxes[group] * w).sum(0) / w.sum()
        pts = (points[group] * w[:, :, None]).sum(0) / w.sum()
        kept.append((box, pts, float(scores[i])))
        alive &= ~group
    return kept


class BlazeFace(FaceDetector):
    """BlazeFace detector. ``min_score``: detection threshold on the sigmoid score (None: the
    variant's default, see :data:`VARIANTS`);
    ``iou_threshold``: boxes overlapping more than this are merged; ``tiles``: also detect on an
    n x n grid of overlapping tiles (n*n + 1 model runs), for faces too small for one pass;
    ``antialias``: shrink frames with the area filter (slower; for photos, not video)."""

    def __init__(
        self,
        variant: str = "short",
        backend: str = "auto",
        num_threads: int | None = None,
        min_score: float | None = None,
        iou_threshold: float = 0.3,
        tiles: int = 1,
        antialias: bool = False,
    ):
        if variant not in VARIANTS:
            raise InputError(
                f"unknown BlazeFace variant {variant!r}; choose from {', '.join(VARIANTS)}"
            )
        self.variant = VARIANTS[variant]
        min_score = self.variant.min_score if min_score is None else min_score
        if not 0.0 < min_score < 1.0:
            raise InputError(f"min_score must be in (0, 1), got {min_score}")
        self.name = f"blazeface_{variant}"
        self.min_score = float(min_score)
        self.iou_threshold = float(iou_threshold)
        if not 1 <= tiles <= 8:
            raise InputError(f"tiles must be in [1, 8], got {tiles}")
        self.tiles = int(tiles)
        self.antialias = bool(antialias)
        try:
            self.graph = open_tflite_graph(
                asset_path(self.variant.file), "BlazeFace detector", backend, num_threads
            )
        except RuntimeBackendError as e:
            raise RuntimeBackendError(f"{e}; or use detector='haar'") from None
        v = self.variant
        self.anchors = ssd_anchors(v.size, v.strides, v.interpolated) * v.size
        shapes = self.graph.output_shapes
        self._reg = next(i for i, s in enumerate(shapes) if s[-1] == 16)
        self._cls = next(i for i, s in enumerate(shapes) if s[-1] == 1)
        if shapes[self._reg][1] != len(self.anchors):
            raise RuntimeBackendError(
                f"{v.file}: {shapes[self._reg][1]} boxes but {len(self.anchors)} anchors"
            )

    def _letterbox(self, frame: np.ndarray) -> tuple[np.ndarray, float, int, int]:
        """Frame -> (1, S, S, 3) RGB in [-1, 1] with the aspect kept, plus scale and padding."""
        size = self.variant.size
        h, w = frame.shape[:2]
        scale = size / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        # Bilinear by default, as MediaPipe's own CPU pipeline does: ten times faster than the
        # area filter on a 640x480 frame; the area filter finds more faces near the threshold.
        interp = cv2.INTER_AREA if self.antialias and scale < 1 else cv2.INTER_LINEAR
        small = cv2.resize(frame, (nw, nh), interpolation=interp)
        if small.ndim == 2:
            small = cv2.cvtColor(small, cv2.COLOR_GRAY2RGB)
        elif small.shape[2] == 4:
            small = cv2.cvtColor(small, cv2.COLOR_BGRA2RGB)
        else:
            small = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
        px, py = (size - nw) // 2, (size - nh) // 2
        canvas = np.zeros((size, size, 3), np.float32)  # zero is mid-gray after scaling
        canvas[py : py + nh, px : px + nw] = small.astype(np.float32) * (2.0 / 255.0) - 1.0
        return canvas[None], scale, px, py

    def _candidates(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (M, 4), keypoints (M, 6, 2) in frame pixels and scores (M,) above the
        threshold, before NMS."""
        x, scale, px, py = self._letterbox(frame)
        out = self.graph(x)
        raw = np.clip(out[self._cls].reshape(-1), -RAW_SCORE_LIMIT, RAW_SCORE_LIMIT)
        scores = 1.0 / (1.0 + np.exp(-raw.astype(np.float64)))
        idx = np.flatnonzero(scores > self.min_score)
        idx = idx[np.argsort(-scores[idx])[:MAX_CANDIDATES]]
        reg = out[self._reg].reshape(-1, 16)[idx]
        anchors = self.anchors[idx]
        centre = reg[:, :2] + anchors
        half = np.abs(reg[:, 2:4]) / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        points = reg[:, 4:].reshape(-1, 6, 2) + anchors[:, None, :]
        valid = (half > 0).all(axis=1)
        # Undo the letterbox: model input pixels -> frame pixels.
        boxes = (boxes[valid] - [px, py, px, py]) / scale
        points = (points[valid] - [px, py]) / scale
        return boxes, points, scores[idx][valid]

    def _tiles(self, h: int, w: int) -> list[tuple[int, int, int, int]]:
        """The whole frame plus an n x n grid of tiles overlapping by a quarter."""
        n = self.tiles
        boxes = [(0, 0, w, h)]
        if n > 1:
            th, tw = min(h, round(h / n * 1.25)), min(w, round(w / n * 1.25))
            for i in range(n):
                for j in range(n):
                    y0, x0 = round(i * (h - th) / (n - 1)), round(j * (w - tw) / (n - 1))
                    boxes.append((x0, y0, x0 + tw, y0 + th))
        return boxes

    def __call__(self, frame: np.ndarray) -> list[Detection]:
        h, w = frame.shape[:2]
        parts = []
        for x0, y0, x1, y1 in self._tiles(h, w):
            boxes, points, scores = self._candidates(frame[y0:y1, x0:x1])
            parts.append((boxes + [x0, y0, x0, y0], points + [x0, y0], scores))
        boxes, points, scores = (np.concatenate(p) for p in zip(*parts, strict=True))
        results = []
        for box, pts, score in weighted_nms(boxes, points, scores, self.iou_threshold):
            x1, y1, x2, y2 = np.clip(box, [0, 0, 0, 0], [w, h, w, h])
            if x2 - x1 < 2 or y2 - y1 < 2:
                continue
            det_box = (float(x1), float(y1), float(x2), float(y2))
            results.append(Detection(det_box, score, pts.astype(np.float32)))
        return results

"""What every face detector returns, and the checks they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detection:
    """One face in frame pixel coordinates.

    ``box`` is ``(x1, y1, x2, y2)``; ``landmarks`` is float32 ``(K, 2)`` (x, y) or None when the
    detector gives none. BlazeFace's six keypoints, in order: the subject's right eye, left eye,
    nose tip, mouth centre, right ear tragion, left ear tragion (the subject's right eye is on the
    image's left in an unmirrored photo).
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray | None = None

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def eyes(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(subject's right eye, subject's left eye) or None."""
        if self.landmarks is None or len(self.landmarks) < 2:
            return None
        return self.landmarks[0], self.landmarks[1]


class FaceDetector(ABC):
    """``detector(frame)`` takes a validated uint8 gray/BGR/BGRA frame and returns detections
    sorted by score, best first."""

    name: str = "base"

    @abstractmethod
    def __call__(self, frame: np.ndarray) -> list[Detection]: ...


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes ``a`` (N, 4) and ``b`` (M, 4), xyxy."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0).astype(np.float32)

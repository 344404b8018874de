"""OpenCV Haar cascade face detector: the fallback when no TFLite/OpenVINO runtime is installed.

Needs nothing beyond OpenCV 4.x, which ships the cascade files; gives boxes only (no eye
keypoints, so faces are not rotation-aligned) and is slower and less accurate than BlazeFace.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError, RuntimeBackendError
from .base import Detection, FaceDetector

CASCADE = "haarcascade_frontalface_default.xml"


class HaarCascade(FaceDetector):
    """``max_side``: frames are shrunk to at most this many pixels per side before detection
    (the cascade's cost grows with the pixel count); ``min_face``: smallest face side in
    frame pixels."""

    name = "haar"

    def __init__(self, max_side: int = 640, min_face: int = 24, min_neighbors: int = 5):
        if max_side < 64 or min_face < 8:
            raise InputError("max_side must be >= 64 and min_face >= 8")
        data = getattr(cv2, "data", None)
        path = Path(data.haarcascades) / CASCADE if data is not None else None
        if path is None or not path.is_file():
            raise RuntimeBackendError(
                "OpenCV's Haar cascades are missing (opencv-python-headless 5.x dropped them; "
                "install 'opencv-python-headless<5')"
            )
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise RuntimeBackendError(f"OpenCV could not load {path}")
        self.max_side, self.min_face, self.min_neighbors = max_side, min_face, min_neighbors

    def __call__(self, frame: np.ndarray) -> list[Detection]:
        if frame.ndim == 3:
            code = cv2.COLOR_BGRA2GRAY if frame.shape[2] == 4 else cv2.COLOR_BGR2GRAY
            frame = cv2.cvtColor(frame, code)
        h, w = frame.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        gray = (
            cv2.resize(
                frame,
                (max(1, round(w * scale)), max(1, round(h * scale))),
                interpolation=cv2.INTER_AREA,
            )
            if scale < 1
            else frame
        )
        min_side = max(8, round(self.min_face * scale))
        if min(gray.shape[:2]) < min_side:
            return []
        found, _, weights = self._cascade.detectMultiScale3(
            cv2.equalizeHist(gray),
            scaleFactor=1.1,
            minNeighbors=self.min_neighbors,
            minSize=(min_side, min_side),
            outputRejectLevels=True,
        )
        results = [
            Detection(
                (x / scale, y / scale, (x + bw) / scale, (y + bh) / scale),
                # detectMultiScale3 weights are unbounded stage sums; squash them into (0, 1).
                float(1.0 / (1.0 + np.exp(-float(wt)))),
            )
            for (x, y, bw, bh), wt in zip(
                np.reshape(found, (-1, 4)), np.reshape(weights, (-1,)), strict=True
            )
        ]
        return sorted(results, key=lambda d: -d.score)

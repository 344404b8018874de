"""Face crops from detections: square, with the bundle's margin, rotated so the eyes are level.

The crop framing follows the bundle's ``preprocess.face_margin`` (the fraction of the face box
added on each side), so SDK crops look like the faces the model was trained on. Each crop is
warped at up to twice the model's input size and then shrunk by
:func:`fer_edge.preprocess.resize_face`, whose area filter avoids the aliasing of a direct
warp down to 48 px.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from .detect.base import Detection
from .preprocess import PreprocessSpec, resize_face

MAX_WARP_FACTOR = 2  # warp at most 2x the input size: the warp's cost grows with its area


def eye_angle(det: Detection) -> float:
    """Degrees to rotate (counter-clockwise, OpenCV's convention) to make the eyes level;
    0 without keypoints."""
    eyes = det.eyes
    if eyes is None:
        return 0.0
    right, left = eyes  # the subject's right eye is on the image's left
    dx, dy = float(left[0] - right[0]), float(left[1] - right[1])
    if dx * dx + dy * dy < 1e-6:
        return 0.0
    return math.degrees(math.atan2(dy, dx))


def crop_matrix(det: Detection, margin: float, out_side: int, rotate: bool = True) -> np.ndarray:
    """2x3 affine map from frame pixels to an ``out_side`` square crop of the face."""
    x1, y1, x2, y2 = det.box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(x2 - x1, y2 - y1, 1.0) * (1 + 2 * margin)
    angle = eye_angle(det) if rotate else 0.0
    m = cv2.getRotationMatrix2D((cx, cy), angle, out_side / side)
    m[:, 2] += (out_side / 2 - cx, out_side / 2 - cy)
    return m


def align_face(
    frame: np.ndarray, det: Detection, spec: PreprocessSpec, rotate: bool = True
) -> np.ndarray:
    """One face of a validated uint8 frame -> uint8 (S, S, C) crop for the model."""
    x1, y1, x2, y2 = det.box
    side = max(x2 - x1, y2 - y1, 1.0) * (1 + 2 * spec.face_margin)
    out_side = int(min(max(round(side), spec.size), MAX_WARP_FACTOR * spec.size))
    m = crop_matrix(det, spec.face_margin, out_side, rotate)
    crop = cv2.warpAffine(
        frame, m, (out_side, out_side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return resize_face(crop, spec)


def align_faces(
    frame: np.ndarray, dets: Sequence[Detection], spec: PreprocessSpec, rotate: bool = True
) -> np.ndarray:
    """All faces of a frame -> uint8 (N, S, S, C), one batch for the classifier."""
    if not dets:
        return np.zeros((0, spec.size, spec.size, spec.channels), np.uint8)
    return np.stack([align_face(frame, d, spec, rotate) for d in dets])

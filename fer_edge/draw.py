"""Overlays for results: a box and label per face, optional probability bars and an FPS line."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .preprocess import as_uint8_image, convert_channels

GREEN, WHITE, BLACK = (80, 200, 60), (255, 255, 255), (0, 0, 0)


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float) -> None:
    thick = max(1, round(scale * 2))
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, BLACK, thick + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, WHITE, thick, cv2.LINE_AA)


def draw_faces(
    frame: np.ndarray, faces: Sequence, bars: bool = True, fps: float | None = None
) -> np.ndarray:
    """A BGR copy of ``frame`` with each :class:`~fer_edge.recognizer.FaceResult` drawn."""
    img = convert_channels(as_uint8_image(frame, "frame"), 3).copy()
    h, w = img.shape[:2]
    scale = max(0.4, min(1.2, w / 1000))
    for face in faces:
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        cv2.rectangle(img, (x1, y1), (x2, y2), GREEN, max(1, round(scale * 2)))
        tag = f"{face.label} {face.score:.0%}"
        if face.track_id is not None:
            tag = f"#{face.track_id} {tag}"
        _text(img, tag, (x1, max(12, y1 - 6)), scale * 0.6)
        if bars and (x2 - x1) >= 60:
            row = max(10, round(14 * scale))
            for k, (name, p) in enumerate(face.scores.items()):
                y = y2 + 4 + k * row
                if y + row > h:
                    break
                length = int((x2 - x1) * 0.5 * p)
                cv2.rectangle(img, (x1, y), (x1 + length, y + row - 3), GREEN, -1)
                _text(
                    img,
                    f"{name} {p:.2f}",
                    (x1 + int((x2 - x1) * 0.5) + 4, y + row - 4),
                    scale * 0.4,
                )
    if fps is not None:
        _text(img, f"{fps:.1f} FPS", (8, round(24 * scale) + 4), scale * 0.7)
    return img

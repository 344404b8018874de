"""Face detectors: BlazeFace (default, MediaPipe models shipped with the package) and the OpenCV
Haar cascade (fallback). :func:`load_detector` picks one by name."""

from __future__ import annotations

import importlib.util

from ..errors import InputError
from .base import Detection, FaceDetector, iou_matrix

DETECTORS = ("auto", "blazeface", "blazeface_short", "blazeface_full", "haar")

__all__ = [
    "DETECTORS",
    "Detection",
    "FaceDetector",
    "iou_matrix",
    "load_detector",
    "load_photo_detector",
]


def _has_tflite_runtime() -> bool:
    return any(
        importlib.util.find_spec(m) for m in ("ai_edge_litert", "tflite_runtime", "openvino")
    )


def load_detector(
    name: str | FaceDetector = "auto",
    num_threads: int | None = None,
    backend: str = "auto",
    **options,
) -> FaceDetector:
    """A face detector by name: ``auto`` (BlazeFace short-range if a TFLite or OpenVINO runtime
    is installed, else Haar), ``blazeface`` / ``blazeface_short``, ``blazeface_full``, ``haar``.
    A :class:`FaceDetector` instance is returned as is. ``options`` go to the detector."""
    if isinstance(name, FaceDetector):
        return name
    if name not in DETECTORS:
        raise InputError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
    if name == "auto":
        name = "blazeface_short" if _has_tflite_runtime() else "haar"
    if name == "haar":
        from .haar import HaarCascade

        return HaarCascade(**options)
    from .blazeface import BlazeFace

    variant = "full" if name == "blazeface_full" else "short"
    return BlazeFace(variant, backend=backend, num_threads=num_threads, **options)


def load_photo_detector(num_threads: int | None = None) -> FaceDetector:
    """The detector for photos, where accuracy matters more than speed: BlazeFace full-range on
    the whole image and on 2x2 tiles, with an anti-aliased downscale; it finds the small faces
    of group photos (about 5x slower than the default)."""
    return load_detector("blazeface_full", num_threads, tiles=2, antialias=True)

"""Face detectors: BlazeFace (default, MediaPipe models shipped with the package) and the OpenCV
Haar cascade (fallback). :func:`load_detector` picks one by name."""

from __future__ import annotations

from ..errors import InputError
from .base import Detection, FaceDetector, iou_matrix

DETECTORS = ("auto", "photo", "blazeface", "blazeface_short", "blazeface_full", "haar")

__all__ = [
    "DETECTORS",
    "Detection",
    "FaceDetector",
    "iou_matrix",
    "load_detector",
    "load_photo_detector",
]


def load_detector(
    name: str | FaceDetector = "auto",
    num_threads: int | None = None,
    backend: str = "auto",
    **options,
) -> FaceDetector:
    """A face detector by name: ``auto`` / ``blazeface`` / ``blazeface_short`` (BlazeFace
    short-range: fast, for streams and faces near the camera), ``blazeface_full``, ``photo``
    (:func:`load_photo_detector`: full-range on tiles, for still photos) or ``haar`` (OpenCV).
    BlazeFace runs on LiteRT, OpenVINO or ONNX Runtime (a base dependency), so every install
    has it. A :class:`FaceDetector` instance is returned as is. ``options`` go to the detector."""
    if isinstance(name, FaceDetector):
        return name
    if name not in DETECTORS:
        raise InputError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
    if name == "photo":
        return load_photo_detector(num_threads, backend=backend, **options)
    if name == "auto":
        name = "blazeface_short"
    if name == "haar":
        from .haar import HaarCascade

        return HaarCascade(**options)
    from .blazeface import BlazeFace

    variant = "full" if name == "blazeface_full" else "short"
    return BlazeFace(variant, backend=backend, num_threads=num_threads, **options)


def load_photo_detector(
    num_threads: int | None = None, backend: str = "auto", **options
) -> FaceDetector:
    """The detector for photos, where accuracy matters more than speed: BlazeFace full-range on
    the whole image and on 2x2 tiles, with an anti-aliased downscale; it finds the small faces
    of group photos (about 5x slower than the default)."""
    options = {"tiles": 2, "antialias": True, **options}
    return load_detector("blazeface_full", num_threads, backend, **options)

"""The SDK entry point: frames in, one typed result per face out.

>>> from fer_edge import Recognizer
>>> rec = Recognizer()                      # the packaged model, best installed backend
>>> for face in rec(frame_bgr):             # gray, BGR or BGRA numpy frame
...     print(face.box, face.label, face.score, face.scores["happy"])
>>> rec.classify([crop1, crop2])            # face crops, no detection

All faces of a frame are classified in one batch (at most :data:`BATCH` per runtime call).

Threads: a Recognizer that does not track may be shared by any number of threads (results are
the same as sequential calls; the runtimes serialise what is not thread-safe). A tracking
Recognizer follows the faces of one stream: calling it from two threads at once, or running two
streams through it at once, raises :class:`~fer_edge.errors.InputError`. Use one per stream.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .align import align_faces
from .bundle import Bundle, load_bundle, resolve
from .calibration import softmax
from .detect import Detection, FaceDetector, load_detector
from .errors import InputError, RuntimeBackendError
from .preprocess import as_uint8_image, crop_list, normalize, resize_face
from .runtimes import load_runtime
from .track import IouTracker

# Faces per runtime call: a runtime's memory grows with the batch (ONNX Runtime's arena keeps the
# largest), so 20,000 crops passed at once run as 20,000 / BATCH calls, not one.
BATCH = 64


@dataclass(frozen=True)
class FaceResult:
    """One face. ``box`` is ``(x1, y1, x2, y2)`` in frame pixels (the whole crop for
    :meth:`Recognizer.classify`); ``probs`` are the softmax probabilities in ``labels`` order
    (smoothed over frames when tracking); ``landmarks`` (K, 2) when the detector gives them;
    ``track_id`` when tracking; ``valence``/``arousal`` in [-1, 1] when the model predicts them."""

    box: tuple[float, float, float, float]
    label: str
    score: float
    probs: np.ndarray = field(repr=False)
    labels: tuple[str, ...] = field(repr=False)
    landmarks: np.ndarray | None = field(default=None, repr=False)
    detection_score: float | None = None
    track_id: int | None = None
    valence: float | None = None
    arousal: float | None = None

    @property
    def scores(self) -> dict[str, float]:
        """Probability per label name."""
        return {n: float(p) for n, p in zip(self.labels, self.probs, strict=True)}

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        d = {
            "box": [round(float(v), 1) for v in self.box],
            "label": self.label,
            "score": round(self.score, 4),
            "scores": {k: round(v, 4) for k, v in self.scores.items()},
        }
        if self.detection_score is not None:
            d["detection_score"] = round(self.detection_score, 4)
        if self.landmarks is not None:
            d["landmarks"] = [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks]
        for key in ("track_id", "valence", "arousal"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d


class Recognizer:
    """Face detection + expression classification on numpy frames.

    Args:
        model: a bundle folder, a loaded :class:`~fer_edge.bundle.Bundle`, or ``"default"``
            (the bundle shipped in the package).
        backend: ``auto``, ``tflite``, ``openvino`` or ``onnxruntime``.
        detector: ``auto`` (the same faces as ``fer-edge predict``: the ``photo`` detector for
            single frames, BlazeFace short-range while tracking a stream), ``photo`` (BlazeFace
            full-range on 2x2 tiles: small faces in group photos, about 10x slower),
            ``blazeface`` (short-range: fast, faces near the camera), ``blazeface_full``,
            ``haar``, a :class:`~fer_edge.detect.FaceDetector`, or None to treat every frame as
            one face.
        num_threads: threads for the classifier and the detector (None: the runtime's default).
        track: follow faces across calls (ids + score smoothing); for video, not photos.
        smoothing: weight of a track's past scores in its moving average (0: none).
        align: rotate crops so the eyes are level (needs detector keypoints).
        max_faces: classify at most this many faces per frame (the most confident ones).
    """

    def __init__(
        self,
        model: str | os.PathLike | Bundle = "default",
        backend: str = "auto",
        detector: str | FaceDetector | None = "auto",
        num_threads: int | None = None,
        track: bool = False,
        smoothing: float = 0.6,
        align: bool = True,
        max_faces: int = 64,
    ):
        if num_threads is not None and (
            not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1
        ):
            raise InputError(f"num_threads must be a positive integer or None, got {num_threads!r}")
        if not isinstance(max_faces, int) or isinstance(max_faces, bool) or max_faces < 1:
            raise InputError(f"max_faces must be a positive integer, got {max_faces!r}")
        if (
            not isinstance(smoothing, (int, float))
            or isinstance(smoothing, bool)
            or not 0 <= smoothing < 1
        ):
            raise InputError(f"smoothing must be a number in [0, 1), got {smoothing!r}")
        if not isinstance(model, (str, os.PathLike, Bundle)):
            raise InputError(
                f"model must be a bundle folder, a Bundle or 'default', got {type(model).__name__}"
            )
        if not isinstance(backend, str):
            raise InputError(f"backend must be a string, got {type(backend).__name__}")
        self.bundle = (
            model if isinstance(model, Bundle) else load_bundle(resolve(model, backend=backend))
        )
        self.runtime = load_runtime(self.bundle, backend, num_threads)
        self._auto_detector = isinstance(detector, str) and detector == "auto"
        self._num_threads = num_threads
        self._photo_detector: FaceDetector | None = None
        self._detector_lock = threading.Lock()
        # With "auto", _detector is the stream one; the photo one loads on the first still frame.
        self._detector = None if detector is None else load_detector(detector, num_threads)
        self.smoothing = smoothing
        self.tracker = IouTracker(smoothing=smoothing) if track else None
        self.align = align
        self.max_faces = max_faces
        self._tracking_call = threading.Lock()  # held while a tracking call runs
        self._session = threading.Lock()  # held while a stream owns the tracker

    @property
    def detector(self) -> FaceDetector | None:
        """The detector the next call uses: with ``detector="auto"``, the photo detector unless
        this Recognizer is tracking a stream."""
        if not self._auto_detector or self.tracker is not None:
            return self._detector
        with self._detector_lock:
            if self._photo_detector is None:
                self._photo_detector = load_detector("photo", self._num_threads)
        return self._photo_detector

    def __repr__(self) -> str:
        det = "auto" if self._auto_detector else getattr(self._detector, "name", None)
        return (
            f"Recognizer(model={self.bundle.name!r}, format={self.bundle.format!r}, "
            f"backend={self.runtime.name!r}, detector={det!r}, labels={list(self.labels)}, "
            f"tracking={self.tracker is not None})"
        )

    @property
    def labels(self) -> tuple[str, ...]:
        return self.bundle.labels

    @property
    def spec(self):
        """The bundle's :class:`~fer_edge.preprocess.PreprocessSpec`."""
        return self.bundle.preprocess

    def set_tracking(self, on: bool) -> None:
        """Turn tracking on (with a fresh tracker) or off."""
        self.tracker = IouTracker(smoothing=self.smoothing) if on else None

    @contextlib.contextmanager
    def tracking_session(self, on: bool):
        """Own this Recognizer for one stream: tracking ``on`` (a fresh tracker) or off inside,
        the previous setting restored after. A second session while one is open raises
        InputError: two streams would mix their faces in one tracker."""
        if not self._session.acquire(blocking=False):
            raise InputError(
                "this Recognizer is already running a stream; use one Recognizer per stream"
            )
        previous = self.tracker
        try:
            self.set_tracking(on)
            yield self
        finally:
            self.tracker = previous
            self._session.release()

    # The stages, public so that benchmarks and custom pipelines can time or replace each.

    def detect(self, frame: object) -> list[Detection]:
        """Faces in a frame, best first, at most ``max_faces``."""
        img = as_uint8_image(frame, "frame")
        detector = self.detector
        if detector is None:
            h, w = img.shape[:2]
            return [Detection((0.0, 0.0, float(w), float(h)), 1.0)]
        return detector(img)[: self.max_faces]

    def crops(self, frame: object, detections: Sequence[Detection]) -> np.ndarray:
        """uint8 (N, S, S, C) model-ready crops of the detected faces."""
        img = as_uint8_image(frame, "frame")
        if self._detector is None:
            return resize_face(img, self.spec)[None]
        return align_faces(img, detections, self.spec, rotate=self.align)

    def infer(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 (N, S, S, C) crops -> probabilities (N, K) and valence/arousal (N, 2) or None,
        in runtime calls of at most :data:`BATCH` faces."""
        k = self.bundle.num_classes
        if len(crops) == 0:
            return np.zeros((0, k), np.float32), None
        out = np.concatenate(
            [
                self.runtime.run(normalize(crops[i : i + BATCH], self.spec))
                for i in range(0, len(crops), BATCH)
            ]
        )
        if not np.isfinite(out).all():  # softmax would turn inf into NaN scores
            raise RuntimeBackendError(
                f"{self.bundle.graph.name} gave non-finite scores (inf or NaN); the model is "
                "broken: check it with fer-edge verify, or export it again"
            )
        va = out[:, k : k + 2] if out.shape[1] == k + 2 else None
        # the bundle's fitted temperature (1 when it has none) turns logits into probabilities
        return softmax(out[:, :k], self.bundle.temperature), va

    def _results(
        self, boxes: list, probs: np.ndarray, va: np.ndarray | None, dets: Sequence | None
    ) -> list[FaceResult]:
        ids: list[int | None] = [None] * len(boxes)
        if self.tracker is not None and dets is not None:
            ids, probs = self.tracker.update(np.asarray(boxes, np.float32), probs)
        results = []
        for i, box in enumerate(boxes):
            top = int(np.argmax(probs[i]))
            det = dets[i] if dets is not None else None
            results.append(
                FaceResult(
                    box=tuple(float(v) for v in box),
                    label=self.labels[top],
                    score=float(probs[i, top]),
                    probs=probs[i],
                    labels=self.labels,
                    landmarks=None if det is None else det.landmarks,
                    detection_score=None if det is None else det.score,
                    track_id=ids[i],
                    valence=None if va is None else float(np.clip(va[i, 0], -1, 1)),
                    arousal=None if va is None else float(np.clip(va[i, 1], -1, 1)),
                )
            )
        return results

    def __call__(self, frame: object) -> list[FaceResult]:
        """Detect and classify every face in a gray, BGR or BGRA frame (uint8, or float in
        [0, 1] or [0, 255]). Returns an empty list when there is no face."""
        img = as_uint8_image(frame, "frame")
        if self.tracker is None:
            return self._detect_and_classify(img)
        if not self._tracking_call.acquire(blocking=False):
            raise InputError(
                "this Recognizer tracks the faces of one stream and is busy with a frame in "
                "another thread; use one Recognizer per thread, or turn tracking off"
            )
        try:
            return self._detect_and_classify(img)
        finally:
            self._tracking_call.release()

    def _detect_and_classify(self, img: np.ndarray) -> list[FaceResult]:
        dets = self.detect(img)
        probs, va = self.infer(self.crops(img, dets))
        return self._results([d.box for d in dets], probs, va, dets)

    def classify(self, faces: Sequence[object] | np.ndarray) -> list[FaceResult]:
        """Classify face crops (gray or BGR, any size) without detection, in batches of at most
        :data:`BATCH` faces (so memory stays bounded however many are passed)."""
        faces = crop_list(faces, "classify()")
        if not faces:
            return []
        probs, va = [], []
        for start in range(0, len(faces), BATCH):
            chunk = faces[start : start + BATCH]
            p, v = self.infer(np.stack([resize_face(f, self.spec) for f in chunk]))
            probs.append(p)
            va.append(v)
        boxes = [(0.0, 0.0, float(f.shape[1]), float(f.shape[0])) for f in faces]
        return self._results(
            boxes, np.concatenate(probs), None if va[0] is None else np.concatenate(va), None
        )

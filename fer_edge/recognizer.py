"""The SDK entry point: frames in, one typed result per face out.

>>> from fer_edge import Recognizer
>>> rec = Recognizer()                      # the packaged model, best installed backend
>>> for face in rec(frame_bgr):             # gray, BGR or BGRA numpy frame
...     print(face.box, face.label, face.score, face.scores["happy"])
>>> rec.classify([crop1, crop2])            # face crops, no detection
>>> with rec.stream_session() as s:        # a video: faces tracked, scores smoothed
...     for frame in frames:
...         print([(f.track_id, f.label) for f in s(frame)])

All faces of a frame are classified in one batch (at most :data:`BATCH` per runtime call).

Threads: a Recognizer may be shared by any number of threads (results are the same as
sequential calls; the runtimes serialise what is not thread-safe). A stream is one sequence of
frames: a Recognizer runs one :class:`StreamSession` at a time, and a session takes one frame at
a time; opening a second session, or calling a session from a second thread while it is busy,
raises :class:`~fer_edge.errors.InputError`. Use one Recognizer per stream.
"""

from __future__ import annotations

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
    (smoothed over frames in a tracking stream session); ``landmarks`` (K, 2) when the detector
    gives them; ``track_id`` in a tracking stream session; ``valence``/``arousal`` in [-1, 1]
    when the model predicts them."""

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
            single frames, BlazeFace short-range in a tracking :meth:`stream_session`),
            ``photo`` (BlazeFace full-range on 2x2 tiles: small faces in group photos, about 10x
            slower),
            ``blazeface`` (short-range: fast, faces near the camera), ``blazeface_full``,
            ``haar``, a :class:`~fer_edge.detect.FaceDetector`, or None to treat every frame as
            one face.
        num_threads: threads for the classifier and the detector (None: the runtime's default).
        smoothing: weight of a track's past scores in its moving average (0: none), in
            tracking stream sessions.
        align: rotate crops so the eyes are level (needs detector keypoints).
        max_faces: classify at most this many faces per frame (the most confident ones).
    """

    def __init__(
        self,
        model: str | os.PathLike | Bundle = "default",
        backend: str = "auto",
        detector: str | FaceDetector | None = "auto",
        num_threads: int | None = None,
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
        # With "auto", this is the stream one; the photo one loads on the first still frame.
        self.stream_detector = None if detector is None else load_detector(detector, num_threads)
        self.smoothing = smoothing
        self.align = align
        self.max_faces = max_faces
        self._stream_open = threading.Lock()  # held while a StreamSession is open

    @property
    def detector(self) -> FaceDetector | None:
        """The detector of single frames (``rec(frame)``): with ``detector="auto"`` the photo
        detector, otherwise the one chosen (a tracking stream session uses
        :attr:`stream_detector`)."""
        if not self._auto_detector:
            return self.stream_detector
        with self._detector_lock:
            if self._photo_detector is None:
                self._photo_detector = load_detector("photo", self._num_threads)
        return self._photo_detector

    def __repr__(self) -> str:
        det = "auto" if self._auto_detector else getattr(self.stream_detector, "name", None)
        return (
            f"Recognizer(model={self.bundle.name!r}, format={self.bundle.format!r}, "
            f"backend={self.runtime.name!r}, detector={det!r}, labels={list(self.labels)})"
        )

    @property
    def labels(self) -> tuple[str, ...]:
        return self.bundle.labels

    @property
    def spec(self):
        """The bundle's :class:`~fer_edge.preprocess.PreprocessSpec`."""
        return self.bundle.preprocess

    def stream_session(self, track: bool = True) -> StreamSession:
        """A session for one stream of frames (a camera, a video), used as a context manager:
        ``with rec.stream_session() as s: faces = s(frame)``. With ``track`` it follows faces
        from frame to frame (``track_id``) and smooths their scores, with a tracker of its own,
        and detects with :attr:`stream_detector`; without, each frame is a photo."""
        return StreamSession(self, track)

    # The stages, public so that benchmarks and custom pipelines can time or replace each.

    def detect(self, frame: object, detector: FaceDetector | None = None) -> list[Detection]:
        """Faces in a frame, best first, at most ``max_faces``, found by ``detector`` (default:
        :attr:`detector`)."""
        img = as_uint8_image(frame, "frame")
        detector = detector or self.detector
        if detector is None:
            h, w = img.shape[:2]
            return [Detection((0.0, 0.0, float(w), float(h)), 1.0)]
        return detector(img)[: self.max_faces]

    def crops(self, frame: object, detections: Sequence[Detection]) -> np.ndarray:
        """uint8 (N, S, S, C) model-ready crops of the detected faces."""
        img = as_uint8_image(frame, "frame")
        if self.stream_detector is None:  # detector=None: the frame is the face
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
        self,
        boxes: list,
        probs: np.ndarray,
        va: np.ndarray | None,
        dets: Sequence | None,
        tracker: IouTracker | None = None,
    ) -> list[FaceResult]:
        ids: list[int | None] = [None] * len(boxes)
        if tracker is not None:
            ids, probs = tracker.update(np.asarray(boxes, np.float32), probs)
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
        return self._frame_results(as_uint8_image(frame, "frame"), self.detector)

    def _frame_results(
        self, img: np.ndarray, detector: FaceDetector | None, tracker: IouTracker | None = None
    ) -> list[FaceResult]:
        dets = self.detect(img, detector)
        probs, va = self.infer(self.crops(img, dets))
        return self._results([d.box for d in dets], probs, va, dets, tracker)

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


class StreamSession:
    """One stream of frames through a :class:`Recognizer`
    (``with rec.stream_session() as s: faces = s(frame)``).

    A tracking session has its own tracker, so every stream starts with fresh ids, and detects
    with the Recognizer's :attr:`~Recognizer.stream_detector`. The Recognizer runs one session
    at a time and a session one frame at a time (a stream's frames come in order): a second
    session, or a second thread calling while a frame is in flight, raises InputError."""

    def __init__(self, recognizer: Recognizer, track: bool = True):
        self.recognizer = recognizer
        self.tracker = IouTracker(smoothing=recognizer.smoothing) if track else None
        self._open = False
        self._busy = threading.Lock()  # held while a frame is in flight

    @property
    def detector(self) -> FaceDetector | None:
        """The detector this session's frames go through."""
        rec = self.recognizer
        return rec.stream_detector if self.tracker is not None else rec.detector

    def __enter__(self) -> StreamSession:
        if not self.recognizer._stream_open.acquire(blocking=False):
            raise InputError(
                "this Recognizer is already running a stream; use one Recognizer per stream"
            )
        self._open = True
        return self

    def __exit__(self, *exc) -> None:
        self._open = False
        self.recognizer._stream_open.release()

    def __call__(self, frame: object) -> list[FaceResult]:
        """The faces of the stream's next frame, as :meth:`Recognizer.__call__` gives them,
        with ``track_id`` and smoothed scores when tracking."""
        if not self._open:
            raise InputError(
                "a stream session takes frames inside its with block: "
                "with rec.stream_session() as s: s(frame)"
            )
        img = as_uint8_image(frame, "frame")
        if not self._busy.acquire(blocking=False):
            raise InputError(
                "this stream session is busy with a frame in another thread; a stream's frames "
                "go through it one at a time: use one Recognizer per stream and per thread"
            )
        try:
            return self.recognizer._frame_results(img, self.detector, self.tracker)
        finally:
            self._busy.release()

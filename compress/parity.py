"""Parity between a PyTorch model and its exported graph run by an SDK runtime, on real faces.

An export is only written when the runtime agrees with PyTorch on the top-1 class of at least
99% (FP32) or 97% (INT8) of the faces; the agreement and the logit differences are recorded in
the bundle's ``metrics.parity``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from fer_edge.data import FaceDataset, load_dataset, stratified_subset
from fer_edge.errors import DatasetError, FerEdgeError
from fer_edge.preprocess import PreprocessSpec

MIN_AGREEMENT = {"fp32": 0.99, "int8": 0.97}
# Share of parity images in which the face detector must find a face: on FER-2013 crops it
# finds one in 93%, on photos of things that are not faces in none.
MIN_FACE_SHARE = 0.5
FACE_CHECK_SAMPLE = 200


class ParityError(FerEdgeError):
    """An exported graph whose outputs disagree with PyTorch beyond the allowed tolerance."""


def real_faces(
    data: str | os.PathLike, split: str, spec: PreprocessSpec, labels, n: int, seed: int = 0
) -> FaceDataset:
    """A class-stratified sample of about ``n`` labelled faces from ``split`` of ``data`` (or from
    ``data`` itself when it has no splits), decoded through :mod:`fer_edge.preprocess`."""
    root = Path(data)
    use_split = split if root.is_dir() and (root / split).is_dir() else None
    ds = load_dataset(root, use_split, labels=labels, spec=spec)
    if len(ds) == 0:
        raise DatasetError(f"{data} holds no faces for the parity check")
    if n < len(ds):
        ds = ds.subset(stratified_subset(ds.labels, n / len(ds), seed))
    return ds


def shipped_faces() -> Path:
    """The 280 real FER-2013 validation faces (40 per class) shipped in the package, for a
    parity check with no dataset on disk (``fer_edge/assets/parity_faces/<class>/``)."""
    return Path(str(resources.files("fer_edge") / "assets" / "parity_faces"))


def require_faces(images: np.ndarray, data) -> float:
    """Refuse a parity set that is not faces: the BlazeFace detector must find a face in at
    least :data:`MIN_FACE_SHARE` of (a sample of) the images, each padded as a face crop
    framed like a dataset's. Returns the share found."""
    from fer_edge.detect import load_detector

    detector = load_detector("blazeface", num_threads=1, min_score=0.5)
    step = max(1, len(images) // FACE_CHECK_SAMPLE)
    sample = images[::step][:FACE_CHECK_SAMPLE]
    found = 0
    for img in sample:
        img = cv2.resize(img, (96, 96))
        img = cv2.copyMakeBorder(img, 24, 24, 24, 24, cv2.BORDER_REPLICATE)
        found += bool(detector(img if img.ndim == 3 else cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)))
    share = found / max(1, len(sample))
    if share < MIN_FACE_SHARE:
        raise DatasetError(
            f"{data}: a face was found in only {share:.0%} of {len(sample)} parity images "
            f"(needs {MIN_FACE_SHARE:.0%}); the parity check needs face crops like the model's "
            "training data (e.g. a FER-2013 split), or leave --data out to use the faces "
            "shipped with fer-edge"
        )
    return share


@contextlib.contextmanager
def output_to(log_path: Path, mode: str = "w"):
    """Send everything the converters print (to Python's and to the C++ file descriptors 1
    and 2) and every warning they raise into ``log_path``, instead of the terminal; ``mode``
    "a" appends to it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    with open(log_path, mode) as log, warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda msg, cat, fn, ln, *a, **k: log.write(
            warnings.formatwarning(msg, cat, fn, ln)
        )
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def compare(reference: np.ndarray, exported: np.ndarray, precision: str) -> dict:
    """Agreement statistics of two (N, K) logit arrays; ``passed`` applies the precision's bar."""
    if reference.shape != exported.shape:
        raise ParityError(
            f"exported graph returns logits of shape {exported.shape}, PyTorch {reference.shape}"
        )
    if not np.isfinite(exported).all():
        return {
            "faces": len(reference),
            "top1_agreement": 0.0,
            "max_abs_logit_diff": float("inf"),
            "mean_abs_logit_diff": float("inf"),
            "min_agreement": MIN_AGREEMENT[precision],
            "passed": False,
        }
    diff = np.abs(reference - exported)
    agree = float((reference.argmax(1) == exported.argmax(1)).mean())
    return {
        "faces": len(reference),
        "top1_agreement": agree,
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "min_agreement": MIN_AGREEMENT[precision],
        "passed": agree >= MIN_AGREEMENT[precision],
    }


def runtime_logits(runtime, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Logits of a loaded SDK runtime on float32 NCHW ``x``, in batches."""
    return np.concatenate([runtime.run(x[i : i + batch]) for i in range(0, len(x), batch)])

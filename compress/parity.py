"""Parity between a PyTorch model and its exported graph run by an SDK runtime, on real faces.

An export is only written when the runtime agrees with PyTorch on the top-1 class of at least
99% (FP32) or 97% (INT8) of the faces; the agreement and the logit differences are recorded in
the bundle's ``metrics.parity``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fer_edge.data import FaceDataset, load_dataset, stratified_subset
from fer_edge.errors import DatasetError, FerEdgeError
from fer_edge.preprocess import PreprocessSpec

MIN_AGREEMENT = {"fp32": 0.99, "int8": 0.97}


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

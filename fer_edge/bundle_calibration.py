"""Fit a bundle's softmax temperature on labelled faces and store it in the bundle:
:func:`calibrate`, the library side of ``fer-edge calibrate`` and of the pipeline's calibration
stage. The fit and the calibration error are :mod:`fer_edge.calibration`'s (which
:mod:`fer_edge.bundle` reads its temperature bounds from, so the fit that needs bundles lives
here)."""

from __future__ import annotations

import os

from . import bundle as bundle_io
from .calibration import expected_calibration_error, fit_temperature, nll, plot_reliability, softmax
from .errors import InputError
from .scoring import labelled_logits


def calibrate(
    model: str | os.PathLike,
    data: str | os.PathLike,
    split: str | None = "val",
    *,
    backend: str = "auto",
    threads: int | None = None,
    reliability_png: str | os.PathLike | None = None,
) -> dict:
    """Fit a temperature on ``split`` of ``data`` and store it in the bundle ``model``
    (``model.temperature``, with the fit's numbers under ``metrics.calibration``)."""
    path = bundle_io.resolve(model, backend=backend)
    if not path.is_dir():
        raise InputError(f"{model}: calibrate takes a bundle folder")
    logits, labels, names = labelled_logits(path, data, split, backend=backend, threads=threads)
    t = fit_temperature(logits, labels)
    stats = {
        "temperature": t,
        "split": split,
        "faces": len(labels),
        "nll_before": nll(logits, labels),
        "nll_after": nll(logits, labels, t),
        "ece_before": expected_calibration_error(softmax(logits), labels),
        "ece_after": expected_calibration_error(softmax(logits, t), labels),
    }
    bundle_io.record_temperature(path, t, stats)
    if reliability_png:
        title = f"{path.name} on {split or data}, T = {t:.3f}"
        plot_reliability(softmax(logits, t), labels, reliability_png, title)
    return stats

"""Fit a softmax temperature on labelled faces and store it in a bundle (``model.temperature``),
so that its scores mean probabilities: the SDK divides the logits by it before the softmax, and
a kiosk that thresholds on ``face.score`` thresholds on a probability. A network trained with
cross-entropy is usually over-confident; one temperature fixes most of that without changing
any decision (the fit and the calibration error: ``fer_edge.calibration``).

examples:
  fer-edge calibrate --model my_bundle --data ../shared/data/fer2013 --split val
  fer-edge eval --model my_bundle --data ../shared/data/fer2013 --split test --reliability rel.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .calibration import expected_calibration_error, fit_temperature, nll, plot_reliability, softmax
from .errors import InputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="bundle folder to calibrate (rewritten)")
    p.add_argument("--data", required=True, help="labelled faces: split root or class folders")
    p.add_argument("--split", default="val", help="split whose faces fit the temperature")
    p.add_argument("--backend", default="auto", help="runtime for non-PyTorch bundles")
    p.add_argument("--threads", type=int, help="inference threads")
    p.add_argument("--reliability", metavar="PNG", help="reliability diagram after fitting")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


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
    from . import bundle as bundle_io
    from .evaluate import labelled_logits

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


def run(args: argparse.Namespace) -> int:
    stats = calibrate(
        args.model,
        args.data,
        args.split,
        backend=args.backend,
        threads=args.threads,
        reliability_png=args.reliability,
    )
    if args.json:
        print(json.dumps(stats))
    else:
        print(
            f"temperature {stats['temperature']:.4f} fitted on {stats['faces']} faces: NLL "
            f"{stats['nll_before']:.4f} -> {stats['nll_after']:.4f}, ECE {stats['ece_before']:.4f} "
            f"-> {stats['ece_after']:.4f}; stored in {args.model}/model.json",
            file=sys.stderr,
        )
    return 0

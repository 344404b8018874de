"""Fit a softmax temperature on labelled faces and store it in a bundle (``model.temperature``),
so that its scores mean probabilities: the SDK divides the logits by it before the softmax, and
a kiosk that thresholds on ``face.score`` thresholds on a probability. A network trained with
cross-entropy is usually over-confident; one temperature fixes most of that without changing
any decision (the fit and the calibration error: ``fer_edge.calibration``; from Python:
``fer_edge.bundle_calibration.calibrate``).

examples:
  fer-edge calibrate --model my_bundle --data ../shared/data/fer2013 --split val
  fer-edge eval --model my_bundle --data ../shared/data/fer2013 --split test --reliability rel.png
"""

from __future__ import annotations

import argparse
import json
import sys

from .bundle_calibration import calibrate


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="bundle folder to calibrate (rewritten)")
    p.add_argument("--data", required=True, help="labelled faces: split root or class folders")
    p.add_argument("--split", default="val", help="split whose faces fit the temperature")
    p.add_argument("--backend", default="auto", help="runtime for non-PyTorch bundles")
    p.add_argument("--threads", type=int, help="inference threads")
    p.add_argument("--reliability", metavar="PNG", help="reliability diagram after fitting")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


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

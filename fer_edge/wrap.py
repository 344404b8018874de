"""Wrap your own ONNX, TFLite or OpenVINO graph into a fer-edge model bundle.

A bundle is a folder with the graph and model.json (labels, preprocessing, sha256 of each
file), which predict, eval, bench and the Python API load. The graph takes a batch of face
crops (N, C, S, S) or (N, S, S, C), scaled to [0, 1] and normalised with --mean and --std, and
returns one score per label in --labels order.

examples:
  fer-edge wrap my_model.onnx --labels angry,disgust,fear,happy,neutral,sad,surprise --out my_bundle
  fer-edge wrap emotion.tflite --labels angry,disgust,fear,happy,sad,surprise,neutral --size 64 --out fer64
  fer-edge predict photo.jpg --model my_bundle
"""

from __future__ import annotations

import argparse
import sys

from .bundle import wrap_graph
from .preprocess import PreprocessSpec


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph", help="a .onnx, .tflite or OpenVINO .xml file (its .bin beside it)")
    p.add_argument(
        "--labels", required=True, help="the class names, comma-separated, in output order"
    )
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--size", type=int, default=48, help="input side in pixels")
    p.add_argument("--channels", type=int, default=1, choices=[1, 3], help="1: gray, 3: BGR")
    p.add_argument("--mean", type=_floats, default=(0.5,), help="per-channel mean on [0, 1] pixels")
    p.add_argument("--std", type=_floats, default=(0.5,), help="per-channel std")
    p.add_argument("--face-margin", type=float, default=0.15, help="crop margin around a face box")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    p.add_argument("--name", help="bundle name (the graph's file name when not given)")


def run(args: argparse.Namespace) -> int:
    spec = PreprocessSpec(
        size=args.size,
        channels=args.channels,
        mean=args.mean,
        std=args.std,
        face_margin=args.face_margin,
    )
    b = wrap_graph(
        args.graph, args.out, args.labels.split(","), spec, name=args.name, precision=args.precision
    )
    print(f"wrapped {args.graph} -> {b.root} ({b!r})", file=sys.stderr)
    return 0

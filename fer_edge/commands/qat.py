"""INT8 quantisation-aware fine-tuning (PT2E, per-channel symmetric weights, per-tensor
activations), with post-training quantisation of the same model as the comparison row.

BN is folded into the convs first, then the graph is exported and fake-quantised with the
LiteRT PT2E quantizer's QAT observers, fine-tuned, and converted. The result exports to TFLite
full-integer INT8 and OpenVINO INT8 (``fer-edge export --int8``). The checkpoint holds the float
source weights (to rebuild the graph) and the fake-quantised graph's state (weights plus learnt
ranges), all plain tensors, so it loads with ``weights_only=True`` and ``--resume`` works.
From Python: ``fer_edge.compress.qat.qat(model=..., data=...)``.
"""

from __future__ import annotations

import argparse

from fer_edge.compress import qat

from .options import add_finetune_arguments, keyword_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, help="float or pruned checkpoint, pytorch bundle or 'default'"
    )
    p.add_argument(
        "--calib-faces",
        type=int,
        default=qat.CALIBRATION_FACES,
        help="training faces that calibrate PTQ",
    )
    add_finetune_arguments(p, epochs=3, lr=1e-4, out="runs/qat")


def run(args: argparse.Namespace) -> int:
    qat.qat(**keyword_arguments(args))
    return 0

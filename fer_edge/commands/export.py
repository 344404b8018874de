"""Export a PyTorch model to an ONNX, TFLite or OpenVINO bundle, checked against PyTorch.

With no other flag (fer-edge export --target tflite) it exports the shipped default student
(INT8, from its QAT weights) into ./default_student_tflite_int8, checked on the real FER-2013 faces shipped with the package.
MODEL is a checkpoint, a pytorch bundle (float, pruned or QAT), or a shipped name:
default_student (the default: the shipped student's weights, QAT INT8) or default_pytorch (a
`vgg` teacher). Targets:
- onnx: FP32, opset 17 or later, dynamic batch (a QAT model, like the shipped student, exports
  the float network it was quantised from);
- tflite: FP32 (litert-torch), or with --int8 full-integer INT8 with int8 input and output;
- openvino: FP32 IR, or with --int8 an INT8 IR.
INT8 uses the QAT model's learnt quantisation when MODEL is a QAT model, else post-training
quantisation calibrated on --calib-faces training faces. Before anything is written the export
runs through the SDK runtime on real validation faces (--data, else the 280 shipped ones; the
same preprocessing as the SDK) and is
refused unless its top-1 agrees with PyTorch on >= 99% (FP32) / >= 97% (INT8) of them; the
agreement and the largest logit difference go into model.json ``metrics.parity``. A parity set
whose images are mostly not faces is refused. The converters' own output goes to OUT.log.
From Python: ``fer_edge.compress.export.export(MODEL, target="tflite")``.
"""

from __future__ import annotations

import argparse

from fer_edge.compress import export
from fer_edge.formats import EXPORT_FORMATS

from .options import keyword_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="default_student",
        help="a checkpoint, a pytorch bundle, or default_student / default_pytorch",
    )
    p.add_argument("--target", required=True, choices=EXPORT_FORMATS)
    p.add_argument(
        "--int8", action="store_true", help="INT8 (tflite, openvino); implied by a QAT model"
    )
    p.add_argument("--out", help="bundle folder to write (./MODEL_TARGET[_int8] when not given)")
    p.add_argument(
        "--data",
        help="FER data (split root or class folders) for the parity faces and INT8 calibration; "
        "the faces shipped with fer-edge when not given",
    )
    p.add_argument("--parity-split", default="val", help="split whose faces check parity")
    p.add_argument("--parity-faces", type=int, default=1000, help="faces in the parity check")
    p.add_argument("--calib-split", default="train", help="split whose faces calibrate PTQ")
    p.add_argument("--calib-faces", type=int, default=512, help="faces that calibrate PTQ")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (17 or later)")
    p.add_argument(
        "--backend", help="SDK runtime for the parity check (the target's own if not given)"
    )


def run(args: argparse.Namespace) -> int:
    export.export(**keyword_arguments(args))
    return 0

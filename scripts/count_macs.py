"""Multiply-accumulates of one inference, counted from the graph file itself (no torch).

ONNX (needs the onnx package): Conv, ConvTranspose, Gemm and MatMul after shape inference at
batch 1. TFLite (needs ai-edge-litert): CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV and
FULLY_CONNECTED from the interpreter's tensor shapes. Elementwise ops, pooling and activations
are not counted (they are memory-bound and small next to the convolutions).

    python scripts/count_macs.py fer_edge/models/default/model.onnx \
        fer_edge/assets/face_detection_short_range.tflite --json
    python scripts/count_macs.py --pi     # on-paper Raspberry Pi 4 / 5 latency of the default

``--pi`` turns the counted MACs of the shipped detector and classifier into per-frame latency at
one thread from the assumed sustained rates in :data:`CORES` (see docs/sdk.md, "Raspberry Pi
and Jetson", for where they come from). An estimate on paper, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

# Assumed sustained GMAC/s of ONE core on the small convolutions of these models (XNNPACK), and
# how much slower than this project's x86 Xeon the Python part (align + preprocess, 0.54 ms p50
# here) runs. Cortex-A72 fp32: OpenCV Zoo on a Pi 4B runs MobileNet-V1 224 (569 M MACs) in
# 72.3 ms on 4 cores = 7.9 GMAC/s = 2.0 per core, and its MobileFaceNet FER (112 px, about 221 M
# MACs) in 32.5 ms = 1.7 per core; int8 without dot-product instructions about 1.5x fp32.
# Cortex-A76 (Pi 5, 2.4 GHz): 2.5x the A72 in fp32 (clock 1.6x, wider NEON issue), int8 with
# SDOT about 2.4x its fp32.
CORES = {
    "Raspberry Pi 4 (Cortex-A72, 1.5 GHz)": {"fp32": 2.0, "int8": 3.0, "python_x": 5.0},
    "Raspberry Pi 5 (Cortex-A76, 2.4 GHz)": {"fp32": 5.0, "int8": 12.0, "python_x": 2.0},
}
PYTHON_MS_HERE = 0.54
REPO = Path(__file__).resolve().parent.parent


def pi_estimate(detector_macs: int, classifier_macs: int) -> dict:
    """Per-frame milliseconds at one thread for one face: detector (float, as shipped) +
    classifier (int8 and fp32) + the Python part."""
    out = {}
    for core, r in CORES.items():
        det = detector_macs / (r["fp32"] * 1e6)
        py = PYTHON_MS_HERE * r["python_x"]
        row = {"detect_ms": round(det, 1), "python_ms": round(py, 1)}
        for prec in ("int8", "fp32"):
            cls = classifier_macs / (r[prec] * 1e6)
            total = det + cls + py
            row[f"classify_{prec}_ms"] = round(cls, 1)
            row[f"frame_{prec}_ms"] = round(total, 1)
            row[f"fps_{prec}"] = round(1000 / total)
        out[core] = row
    return out


class MacCountError(RuntimeError):
    """The graph cannot be counted (unknown format or shapes that stay unknown)."""


def onnx_macs(path: Path) -> dict:
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
    for inp in model.graph.input:  # batch 1 for every dynamic leading dimension
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    total, per_op = 0, {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        out = shapes.get(node.output[0])
        w = shapes.get(node.input[1])
        if not out or not w or 0 in out or 0 in w:
            raise MacCountError(f"{path}: unknown shape at {node.op_type} {node.name}")
        if node.op_type == "Conv":  # out (N, Cout, H, W), weight (Cout, Cin/groups, kh, kw)
            macs = int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type == "ConvTranspose":  # weight (Cin, Cout/groups, kh, kw)
            src = shapes[node.input[0]]
            macs = int(np.prod(src)) * int(np.prod(w[1:]))
        else:  # Gemm / MatMul: out (.., N), reduction over the shared dimension
            a = shapes[node.input[0]]
            trans_a = any(att.name == "transA" and att.i for att in node.attribute)
            k = a[-2] if trans_a else a[-1]
            macs = int(np.prod(out)) * int(k)
        total += macs
        per_op[node.op_type] = per_op.get(node.op_type, 0) + macs
    return {"macs": total, "per_op": per_op}


def tflite_macs(path: Path) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    shape = {t["index"]: list(t["shape"]) for t in it.get_tensor_details()}
    total, per_op = 0, {}
    for op in it._get_ops_details():
        name = op["op_name"]
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED"):
            continue
        ins, outs = list(op["inputs"]), list(op["outputs"])
        if name == "TRANSPOSE_CONV":  # inputs: output_shape, weights (O, kh, kw, I), input
            w, src = shape[ins[1]], shape[ins[2]]
            macs = int(np.prod(src)) * int(np.prod(w[:3]))
        else:
            out, w = shape[outs[0]], shape[ins[1]]
            if name == "CONV_2D":  # weights (O, kh, kw, I/groups), out NHWC
                macs = int(np.prod(out)) * int(np.prod(w[1:]))
            elif name == "DEPTHWISE_CONV_2D":  # weights (1, kh, kw, C*mult)
                macs = int(np.prod(out)) * int(w[1] * w[2])
            else:  # FULLY_CONNECTED: weights (O, I)
                macs = int(np.prod(out)) * int(w[-1])
        total += macs
        per_op[name] = per_op.get(name, 0) + macs
    return {"macs": total, "per_op": per_op}


def count(path: Path) -> dict:
    if path.suffix == ".onnx":
        return onnx_macs(path)
    if path.suffix == ".tflite":
        return tflite_macs(path)
    raise MacCountError(f"{path}: only .onnx and .tflite graphs are counted")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("graphs", nargs="*", type=Path)
    p.add_argument("--json", action="store_true")
    p.add_argument("--pi", action="store_true", help="on-paper Pi 4 / Pi 5 latency (see above)")
    args = p.parse_args(argv)
    if args.pi:
        det = count(REPO / "fer_edge/assets/face_detection_short_range.tflite")["macs"]
        cls = count(REPO / "fer_edge/models/default/model.onnx")["macs"]
        print(
            json.dumps(
                {"detector_macs": det, "classifier_macs": cls} | pi_estimate(det, cls), indent=1
            )
        )
        return
    if not args.graphs:
        p.error("give graphs to count, or --pi")
    try:
        out = {str(g): count(g) for g in args.graphs}
    except (MacCountError, OSError) as e:
        sys.exit(f"count_macs: error: {e}")
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for g, r in out.items():
            print(f"{r['macs'] / 1e6:8.2f} M MACs  {g}")


if __name__ == "__main__":
    main()

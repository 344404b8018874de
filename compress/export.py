"""Export a PyTorch model to an ONNX, TFLite or OpenVINO bundle, checked against PyTorch.

With no other flag (fer-edge export --target tflite) it exports the shipped default student
into ./default_student_tflite, checked on the real FER-2013 faces shipped with the package.
MODEL is a checkpoint, a pytorch bundle (float, pruned or QAT), or a shipped name:
default_student (the default; the teacher default_pytorch while the student's PyTorch weights
are not shipped) or default_pytorch (the teacher). Targets:
- onnx: FP32, opset 17 or later, dynamic batch;
- tflite: FP32 (litert-torch), or with --int8 full-integer INT8 with int8 input and output;
- openvino: FP32 IR, or with --int8 an INT8 IR.
INT8 uses the QAT model's learnt quantisation when MODEL is a QAT model, else post-training
quantisation calibrated on --calib-faces training faces. Before anything is written the export
runs through the SDK runtime on real validation faces (--data, else the 280 shipped ones; the
same preprocessing as the SDK) and is
refused unless its top-1 agrees with PyTorch on >= 99% (FP32) / >= 97% (INT8) of them; the
agreement and the largest logit difference go into model.json ``metrics.parity``. A parity set
whose images are mostly not faces is refused. The converters' own output goes to OUT.log.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from fer_edge import bundle as bundle_io
from fer_edge.errors import InputError
from fer_edge.formats import EXPORT_FORMATS, NATIVE_BACKEND
from fer_edge.preprocess import normalize
from fer_edge.runtimes import load_runtime
from fer_edge.runtimes.openvino import PRECISION_HINTS
from fer_edge.train.model_io import LoadedModel, git_commit, load_model, va_meta
from fer_edge.train.predictor import predict_logits

from . import parity
from .quantize import calibration_faces, ptq, quantizer


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


def _onnx(net, x: torch.Tensor, out: Path, opset: int) -> dict:
    path = out / "model.onnx"
    torch.onnx.export(
        net,
        (x,),
        str(path),
        opset_version=opset,
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return {"files": {"model.onnx": path}, "model": {"file": "model.onnx", "opset": opset}}


def _tflite(net, x: torch.Tensor, out: Path, int8: bool) -> dict:
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig

    cfg = QuantConfig(pt2e_quantizer=quantizer(qat=False)) if int8 else None
    path = out / "model.tflite"
    litert_torch.convert(net, (x[:1],), quant_config=cfg).export(str(path))
    return {
        "files": {"model.tflite": path},
        "model": {"file": "model.tflite", "io": "int8" if int8 else "float32"},
    }


def _openvino(net, x: torch.Tensor, out: Path, int8: bool) -> dict:
    from fer_edge.runtimes.openvino import import_openvino

    ov = import_openvino()  # with its telemetry off

    if int8:  # the PT2E graph's quantise/dequantise pairs become FakeQuantize -> int8 kernels
        batch = torch.export.Dim("batch", min=1, max=4096)
        ov_model = ov.convert_model(torch.export.export(net, (x,), dynamic_shapes=({0: batch},)))
    else:
        ov_model = ov.convert_model(net, example_input=x, input=[(-1, *x.shape[1:])])
    # Dynamic in the batch only: the converter of an exported program leaves every dimension
    # dynamic, and the CPU plugin then finds no bf16 kernel for some INT8 graphs.
    ov_model.reshape({ov_model.inputs[0]: ov.PartialShape([-1, *x.shape[1:]])})
    ov.save_model(ov_model, str(out / "model.xml"), compress_to_fp16=False)
    # The runtime compiles with what the bundle records: the precision the parity check measured.
    return {
        "files": {"model.xml": out / "model.xml", "model.bin": out / "model.bin"},
        "model": {"file": "model.xml", "runtime_hints": {"openvino": dict(PRECISION_HINTS)}},
    }


def convert(net, target: str, x: torch.Tensor, out: Path, int8: bool, opset: int = 17) -> dict:
    """Write ``net`` in ``target``'s format into folder ``out``; returns its files and model.json
    ``model`` fields."""
    net = getattr(net, "graph", net)  # exporters take a converted INT8 graph bare, not wrapped
    with torch.no_grad():
        if target == "onnx":
            return _onnx(net, x, out, opset)
        if target == "tflite":
            return _tflite(net, x, out, int8)
        return _openvino(net, x, out, int8)


def _networks(lm: LoadedModel, int8: bool, args) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """(network to convert, PyTorch reference it must agree with, what the reference is)."""
    if lm.kind == "qat":
        return lm.model, lm.model, "pytorch qat int8 (fake-quantised)"
    if not int8:
        return lm.model, lm.model, "pytorch fp32"
    calib_ds = parity.real_faces(
        args.data or parity.shipped_faces(),
        args.calib_split,
        lm.spec,
        lm.labels,
        args.calib_faces,
        seed=1,
    )
    calib = calibration_faces(calib_ds.images, calib_ds.labels, args.calib_faces)
    return ptq(lm.model, calib, lm.spec), lm.model, "pytorch fp32"


def default_out(model: str, target: str, int8: bool) -> Path:
    """``./<model name>_<target>[_int8]`` in the working directory (``default_student_tflite``
    for the shipped student)."""
    path = Path(str(model).rstrip("/\\"))
    name = path.stem if path.suffix in (".pt", ".pth", ".ckpt") else path.name or "model"
    if name == bundle_io.DEFAULT_STUDENT:
        name = "default_student"
    return Path.cwd() / f"{name}_{target}{'_int8' if int8 else ''}"


def export_model_name(model: str | None) -> str:
    """``default_student`` -> the shipped student's PyTorch bundle, or, until it ships, the
    teacher (default_pytorch), saying so on stderr."""
    model = model or "default_student"
    if model not in ("default_student", bundle_io.DEFAULT_STUDENT):
        return model
    student = bundle_io.shipped_models() / bundle_io.DEFAULT_STUDENT
    if (student / "model.json").is_file():
        return str(student)
    print(
        f"fer-edge export: this installation ships no PyTorch weights of the default student "
        f"({bundle_io.DEFAULT_STUDENT}); exporting the teacher default_pytorch instead "
        "(--model to choose)",
        file=sys.stderr,
    )
    return "default_pytorch"


def export(args: argparse.Namespace) -> bundle_io.Bundle:
    """Convert, check parity through the SDK runtime, and write the bundle only if it passes."""
    if args.target not in EXPORT_FORMATS:
        raise InputError(f"--target must be one of {', '.join(EXPORT_FORMATS)}")
    if args.opset < 17:
        raise InputError(f"--opset must be 17 or later, got {args.opset}")
    args.model = export_model_name(args.model)
    lm = load_model(args.model)
    int8 = bool(args.int8 or lm.kind == "qat")
    if int8 and args.target == "onnx":
        raise InputError("ONNX export is FP32; use --target tflite or openvino for INT8")
    if not args.out:
        args.out = str(default_out(args.model, args.target, int8))
    data = args.data or parity.shipped_faces()
    precision = "int8" if int8 else "fp32"
    spec = lm.spec
    faces = parity.real_faces(data, args.parity_split, spec, lm.labels, args.parity_faces)
    parity.require_faces(faces.images, data)
    net, reference, ref_name = _networks(lm, int8, args)
    net.eval()
    ref_logits = predict_logits(reference, faces.images, spec)
    x = torch.from_numpy(normalize(faces.images[:2], spec))
    meta_source = {
        "model": str(args.model),
        "kind": lm.kind,
        "arch": lm.state.get("arch"),
        "commit": git_commit(),
        "torch": torch.__version__,
    }
    log_path = Path(str(Path(args.out)).rstrip("/\\") + ".log")
    with tempfile.TemporaryDirectory(prefix="fer-edge-export-") as tmp:
        tmp = Path(tmp)
        (tmp / "graph").mkdir()
        with parity.output_to(log_path):  # the converters' progress lines and warnings
            converted = convert(net, args.target, x, tmp / "graph", int8, args.opset)
        model_meta = {
            "format": args.target,
            "precision": precision,
            "arch": lm.state.get("arch"),
            **converted["model"],
            **va_meta(lm.state),
        }
        stage = bundle_io.save_bundle(
            tmp / "stage",
            converted["files"],
            labels=lm.labels,
            preprocess=spec,
            model=model_meta,
            source=meta_source,
        )
        runtime = load_runtime(stage, args.backend or NATIVE_BACKEND[args.target])
        got = parity.runtime_logits(runtime, normalize(faces.images, spec))
        result = parity.compare(ref_logits, got, precision)
        result.update(reference=ref_name, runtime=runtime.name, split=args.parity_split)
        print(
            f"parity ({runtime.name}, {result['faces']} faces): top-1 agreement {result['top1_agreement']:.4f}, "
            f"max |logit diff| {result['max_abs_logit_diff']:.4g}",
            file=sys.stderr,
        )
        if not result["passed"]:
            advice = ""
            if int8 and lm.kind != "qat":
                advice = (
                    " Post-training quantisation loses too much on this model; fine-tune it "
                    "with quantisation-aware training and export the result: fer-edge qat "
                    f"--model {args.model} --data FER_DATA --out runs/qat, then fer-edge export "
                    f"--target {args.target} --model runs/qat/bundle"
                )
            raise parity.ParityError(
                f"{args.target} {precision} export agrees with {ref_name} on only "
                f"{result['top1_agreement']:.2%} of {result['faces']} faces (needs {result['min_agreement']:.0%}); "
                f"max logit difference {result['max_abs_logit_diff']:.4g}. Nothing was written to {args.out}."
                + advice
            )
        files = {name: stage.root / name for name in stage.meta["files"]}
        b = bundle_io.save_bundle(
            args.out,
            files,
            labels=lm.labels,
            preprocess=spec,
            model=model_meta,
            source=meta_source,
            metrics={"parity": result},
        )
    size = sum((b.root / f).stat().st_size for f in b.meta["files"])
    print(f"{args.target} {precision}: {size / 1024:.0f} KiB -> {b.root}", file=sys.stderr)
    print(f"converter output: {log_path}", file=sys.stderr)
    return b


def run(args: argparse.Namespace) -> int:
    export(args)
    return 0

"""Export a PyTorch model to an ONNX, TFLite or OpenVINO bundle, checked against PyTorch:
:func:`export`, the library side of ``fer-edge export`` (whose ``--help`` lists the targets, the
INT8 paths and the parity rule). Nothing is written unless the export, run through the SDK
runtime on real faces, agrees with PyTorch.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from fer_edge import bundle as bundle_io
from fer_edge.errors import InputError
from fer_edge.formats import EXPORT_FORMATS, NATIVE_BACKEND
from fer_edge.preprocess import normalize
from fer_edge.runtimes import load_runtime
from fer_edge.runtimes.openvino import PRECISION_HINTS
from fer_edge.train.model_io import (
    LoadedModel,
    git_commit,
    load_model,
    model_from_state,
    qat_source_state,
    va_meta,
)
from fer_edge.train.predictor import predict_logits

from . import parity
from .quantize import calibration_faces, ptq, quantizer


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
    if int8:
        float_matmul_weights(ov_model)
    ov.save_model(ov_model, str(out / "model.xml"), compress_to_fp16=False)
    # The runtime compiles with what the bundle records: the precision the parity check measured.
    return {
        "files": {"model.xml": out / "model.xml", "model.bin": out / "model.bin"},
        "model": {"file": "model.xml", "runtime_hints": {"openvino": dict(PRECISION_HINTS)}},
    }


def float_matmul_weights(ov_model) -> int:
    """Replace the int8 weights of ``ov_model``'s MatMuls (the classifier; int8 constant ->
    Convert -> Multiply by the per-channel scale) by the same values as an f32 constant, in
    place; returns how many. OpenVINO 2026.4's ARM CPU plugin ran the int8 MatMul of the IR
    this export writes wrongly (the classifier's logits off by up to 0.83 where every
    convolution before it matched x86: 92% top-1 agreement, docs/results/arm64_openvino_int8.json);
    with f32 weights both plugins run it in f32 on its still quantised input, so the
    fake-quantised model is unchanged (the x86 scores of the shipped IR stayed the same) and
    the convolutions keep their int8 weights and kernels."""
    import openvino.opset13 as ops

    done = 0
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        scale = op.input(1).get_source_output().get_node()
        if scale.get_type_name() != "Multiply":
            continue
        convert = scale.input(0).get_source_output().get_node()
        factor = scale.input(1).get_source_output().get_node()
        if convert.get_type_name() != "Convert" or factor.get_type_name() != "Constant":
            continue
        weights = convert.input(0).get_source_output().get_node()
        if weights.get_type_name() != "Constant" or not weights.get_element_type().is_integral():
            continue
        w = weights.get_data().astype(np.float32) * factor.get_data().astype(np.float32)
        op.input(1).replace_source_output(ops.constant(w.astype(np.float32)).output(0))
        done += 1
    return done


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


def _networks(
    lm: LoadedModel, int8: bool, data, calib_split: str, calib_faces: int
) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """(network to convert, PyTorch reference it must agree with, what the reference is)."""
    if lm.kind == "qat":
        return lm.model, lm.model, "pytorch qat int8 (fake-quantised)"
    if not int8:
        return lm.model, lm.model, "pytorch fp32"
    calib_ds = parity.real_faces(
        data or parity.shipped_faces(), calib_split, lm.spec, lm.labels, calib_faces, seed=1
    )
    calib = calibration_faces(calib_ds.images, calib_ds.labels, calib_faces)
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
    """``default_student`` (the default) -> the shipped student's PyTorch bundle."""
    model = model or "default_student"
    if model in ("default_student", bundle_io.DEFAULT_STUDENT):
        return str(bundle_io.shipped_models() / bundle_io.DEFAULT_STUDENT)
    return model


def export(
    model: str | os.PathLike | None = "default_student",
    *,
    target: str,
    int8: bool = False,
    out: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    parity_split: str = "val",
    parity_faces: int = 1000,
    calib_split: str = "train",
    calib_faces: int = 512,
    opset: int = 17,
    backend: str | None = None,
) -> bundle_io.Bundle:
    """Convert ``model`` to ``target`` (onnx, tflite, openvino), check parity through the SDK
    runtime, and write the bundle only if it passes; returns it.

    The arguments are ``fer-edge export``'s options (see its ``--help``): ``out`` defaults to
    ``./MODEL_TARGET[_int8]``, ``data`` to the faces shipped with fer-edge.
    """
    if target not in EXPORT_FORMATS:
        raise InputError(f"--target must be one of {', '.join(EXPORT_FORMATS)}")
    if opset < 17:
        raise InputError(f"--opset must be 17 or later, got {opset}")
    model = export_model_name(model)
    # Rebuilding a QAT graph imports the quantisation stack, which prints on the C++ streams;
    # that output joins the converter log, whose name waits for the model's kind (_int8).
    with tempfile.TemporaryDirectory(prefix="fer-edge-load-") as tmp:
        load_log = Path(tmp) / "load.log"
        with parity.output_to(load_log):
            lm = load_model(model)
        load_output = load_log.read_text(errors="replace")
    if lm.kind == "qat" and target == "onnx" and not int8:
        # ONNX is FP32 only: the QAT model's float source is what an FP32 target deploys (the
        # shipped default student is a QAT model, and `--target onnx` alone must still work).
        print(
            f"fer-edge export: {model} is a QAT (INT8) model and ONNX is FP32; exporting the "
            "float network it was quantised from",
            file=sys.stderr,
        )
        state = qat_source_state(lm.state)
        lm = LoadedModel(model_from_state(state), lm.labels, lm.spec, state)
    int8 = bool(int8 or lm.kind == "qat")
    if int8 and target == "onnx":
        raise InputError("ONNX export is FP32; use --target tflite or openvino for INT8")
    if not out:
        out = default_out(model, target, int8)
    log_path = Path(str(Path(out)).rstrip("/\\") + ".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(load_output)
    faces_from = data or parity.shipped_faces()
    precision = "int8" if int8 else "fp32"
    spec = lm.spec
    faces = parity.real_faces(faces_from, parity_split, spec, lm.labels, parity_faces)
    parity.require_faces(faces.images, faces_from)
    with parity.output_to(log_path, "a"):  # post-training quantisation prints too
        net, reference, ref_name = _networks(lm, int8, data, calib_split, calib_faces)
    net.eval()
    ref_logits = predict_logits(reference, faces.images, spec)
    x = torch.from_numpy(normalize(faces.images[:2], spec))
    meta_source = {
        "model": str(model),
        "kind": lm.kind,
        "arch": lm.state.get("arch"),
        "commit": git_commit(),
        "torch": torch.__version__,
    }
    with tempfile.TemporaryDirectory(prefix="fer-edge-export-") as tmp:
        tmp = Path(tmp)
        (tmp / "graph").mkdir()
        with parity.output_to(log_path, "a"):  # the converters' progress lines and warnings
            converted = convert(net, target, x, tmp / "graph", int8, opset)
        model_meta = {
            "format": target,
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
        runtime = load_runtime(stage, backend or NATIVE_BACKEND[target])
        got = parity.runtime_logits(runtime, normalize(faces.images, spec))
        result = parity.compare(ref_logits, got, precision)
        result.update(reference=ref_name, runtime=runtime.name, split=parity_split)
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
                    f"--model {model} --data FER_DATA --out runs/qat, then fer-edge export "
                    f"--target {target} --model runs/qat/bundle"
                )
            raise parity.ParityError(
                f"{target} {precision} export agrees with {ref_name} on only "
                f"{result['top1_agreement']:.2%} of {result['faces']} faces (needs {result['min_agreement']:.0%}); "
                f"max logit difference {result['max_abs_logit_diff']:.4g}. Nothing was written to {out}."
                + advice
            )
        files = {name: stage.root / name for name in stage.meta["files"]}
        b = bundle_io.save_bundle(
            out,
            files,
            labels=lm.labels,
            preprocess=spec,
            model=model_meta,
            source=meta_source,
            metrics={"parity": result},
        )
    size = sum((b.root / f).stat().st_size for f in b.meta["files"])
    print(f"{target} {precision}: {size / 1024:.0f} KiB -> {b.root}", file=sys.stderr)
    print(f"converter output: {log_path}", file=sys.stderr)
    return b

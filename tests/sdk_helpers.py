"""Tiny classifier bundles for the SDK tests, built without torch in milliseconds: a linear
model on the pixels (logits = W @ x + b), written as ONNX (onnx.helper) and as TFLite (the
flatbuffer schema shipped with ai-edge-litert), float or fully int8, so every backend can be
checked against the same numpy reference."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from fer_edge.bundle import Bundle, save_bundle
from fer_edge.labels import FER_LABELS
from fer_edge.preprocess import PreprocessSpec

SIZE = 48


def weights(num_classes: int = 7, size: int = SIZE, channels: int = 1, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.02, (num_classes, channels * size * size)).astype(np.float32)
    b = rng.normal(0, 0.1, num_classes).astype(np.float32)
    return w, b


def reference(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Logits of the linear model for float32 NCHW input."""
    return x.reshape(len(x), -1) @ w.T + b


def onnx_classifier(path: Path, num_classes: int = 7, size: int = SIZE, channels: int = 1) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = weights(num_classes, size, channels)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "B"], ["logits"], transB=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", num_classes])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def tflite_classifier(
    path: Path,
    num_classes: int = 7,
    size: int = SIZE,
    channels: int = 1,
    nhwc: bool = False,
    int8: bool = False,
    fixed_batch: bool = False,
) -> Path:
    """The linear model as TFLite: RESHAPE -> FULLY_CONNECTED. ``int8``: int8 input, weights and
    output with their scales (bias int32); ``fixed_batch``: the reshape hard-codes batch 1, so the
    batch cannot be resized."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    w, b = weights(num_classes, size, channels)
    if nhwc:  # the same model on NHWC input: permute the weight columns to match
        w = (
            w.reshape(num_classes, channels, size, size)
            .transpose(0, 2, 3, 1)
            .reshape(num_classes, -1)
        )
    feat = channels * size * size
    in_shape = [1, size, size, channels] if nhwc else [1, channels, size, size]
    buffers = [s.BufferT()]

    def buffer(arr: np.ndarray) -> int:
        buf = s.BufferT()
        buf.data = np.frombuffer(arr.tobytes(), np.uint8).tolist()
        buffers.append(buf)
        return len(buffers) - 1

    def tensor(name, shape, ttype, buf=0, scale=None, zero=0, signature=None):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), list(shape), ttype, buf
        if signature is not None:
            t.shapeSignature = list(signature)
        if scale is not None:
            q = s.QuantizationParametersT()
            q.scale, q.zeroPoint = [float(scale)], [int(zero)]
            t.quantization = q
        return t

    new_shape = np.array([1 if fixed_batch else -1, feat], np.int32)
    sig_in = [1 if fixed_batch else -1, *in_shape[1:]]
    if int8:
        in_scale, in_zero = 2.0 / 255.0, 0  # inputs in about [-1, 1]
        w_scale = float(np.abs(w).max()) / 127.0
        out_scale, out_zero = 0.05, 0
        wq = np.clip(np.rint(w / w_scale), -127, 127).astype(np.int8)
        bq = np.rint(b / (in_scale * w_scale)).astype(np.int32)
        tensors = [
            tensor("input", in_shape, s.TensorType.INT8, 0, in_scale, in_zero, sig_in),
            tensor("shape", [2], s.TensorType.INT32, buffer(new_shape)),
            tensor("flat", [1, feat], s.TensorType.INT8, 0, in_scale, in_zero),
            tensor("W", [num_classes, feat], s.TensorType.INT8, buffer(wq), w_scale, 0),
            tensor("B", [num_classes], s.TensorType.INT32, buffer(bq), in_scale * w_scale, 0),
            tensor("logits", [1, num_classes], s.TensorType.INT8, 0, out_scale, out_zero),
        ]
    else:
        tensors = [
            tensor("input", in_shape, s.TensorType.FLOAT32, signature=sig_in),
            tensor("shape", [2], s.TensorType.INT32, buffer(new_shape)),
            tensor("flat", [1, feat], s.TensorType.FLOAT32),
            tensor("W", [num_classes, feat], s.TensorType.FLOAT32, buffer(w)),
            tensor("B", [num_classes], s.TensorType.FLOAT32, buffer(b)),
            tensor("logits", [1, num_classes], s.TensorType.FLOAT32),
        ]
    codes = []
    for op in (s.BuiltinOperator.RESHAPE, s.BuiltinOperator.FULLY_CONNECTED):
        c = s.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = op, op, 1
        codes.append(c)
    reshape = s.OperatorT()
    reshape.opcodeIndex, reshape.inputs, reshape.outputs = 0, [0, 1], [2]
    reshape.builtinOptionsType = s.BuiltinOptions.ReshapeOptions
    reshape.builtinOptions = s.ReshapeOptionsT()
    reshape.builtinOptions.newShape = new_shape.tolist()
    fc = s.OperatorT()
    fc.opcodeIndex, fc.inputs, fc.outputs = 1, [2, 3, 4], [5]
    fc.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
    fc.builtinOptions = s.FullyConnectedOptionsT()
    graph = s.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = tensors, [0], [5], [reshape, fc]
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, codes, [graph], buffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


def wrap_onnx(dest: Path, graph: Path | bytes) -> Path:
    """A bundle folder ``dest`` around one ONNX graph (a path or its bytes) with the FER labels
    and default preprocessing; returns the folder."""
    return save_bundle(
        dest,
        {"model.onnx": graph},
        labels=FER_LABELS,
        preprocess=PreprocessSpec(),
        model={"format": "onnx", "file": "model.onnx"},
    ).root


def make_bundle(
    root: Path,
    fmt: str = "onnx",
    labels: tuple[str, ...] = FER_LABELS,
    num_outputs: int | None = None,
    precision: str = "fp32",
    **tflite_options,
) -> Bundle:
    """A bundle folder under ``root`` holding the tiny model as ``fmt`` (onnx or tflite)."""
    root.mkdir(parents=True, exist_ok=True)
    k = num_outputs or len(labels)
    name = f"{fmt}_{precision}_{k}_{'_'.join(f'{a}{v}' for a, v in sorted(tflite_options.items()))}"
    if fmt == "onnx":
        graph = onnx_classifier(root / f"{name}.onnx", k)
    else:
        graph = tflite_classifier(root / f"{name}.tflite", k, **tflite_options)
    return save_bundle(
        root / name,
        {graph.name: graph},
        labels=labels,
        preprocess=PreprocessSpec(),
        model={"format": fmt, "file": graph.name, "precision": precision},
        name=name,
    )


def check_openvino_bundle(bundle: Bundle, faces: np.ndarray, min_agreement: float) -> list[str]:
    """Compile an OpenVINO bundle under every inference precision OpenVINO can choose on this
    CPU and require each to agree with the SDK's run (the bundle's recorded hints) on the top-1
    class of ``min_agreement`` of the real ``faces`` (uint8 crops); returns the precisions tried.

    What it covers: OpenVINO's own choice (no hint: bf16 on CPUs with native bf16, f32
    elsewhere), f32, and bf16 where the CPU has native bf16 (AVX512_BF16 or AMX: AMD Zen 4+,
    Intel Sapphire Rapids+). On a CPU without bf16 OpenVINO never runs bf16, so there only the
    f32 path such a CPU really takes is compiled; the bf16 leg runs where CI lands on a CPU with
    it. Also: the IR's input is dynamic in the batch only, and an INT8 graph keeps int8
    convolutions under every precision."""
    from fer_edge.preprocess import normalize
    from fer_edge.runtimes import load_runtime
    from fer_edge.runtimes.openvino import OpenVinoRuntime, cpu_precisions, import_openvino

    ov = import_openvino()

    if bundle.format == "openvino":
        shape = ov.Core().read_model(str(bundle.graph)).inputs[0].get_partial_shape()
        assert shape.rank.get_length() == 4 and shape[0].is_dynamic, shape
        assert all(shape[i].is_static for i in range(1, 4)), f"{bundle.name}: input {shape}"
    x = normalize(faces, bundle.preprocess)
    sdk = load_runtime(bundle, "openvino", num_threads=1).run(x)
    tried = []
    for precision in (None, *cpu_precisions()):
        hints = {} if precision is None else {"INFERENCE_PRECISION_HINT": precision}
        rt = OpenVinoRuntime(bundle, num_threads=1, hints=hints)
        got = rt.run(x)
        agree = float((got.argmax(1) == sdk.argmax(1)).mean())
        assert agree >= min_agreement, f"{bundle.name} at {precision or 'default'}: {agree:.3f}"
        if bundle.precision == "int8":
            convs = rt.graph.layer_precisions()["Convolution"]
            if platform.machine().lower() in ("aarch64", "arm64"):
                # OpenVINO's ARM plugin runs them in f32 (2026.4): the runtime must say so
                assert rt.int8_convolutions == (convs <= {"u8", "i8"}), (bundle.name, convs)
            else:
                assert convs <= {"u8", "i8"}, (
                    f"{bundle.name} at {precision}: convolutions in {convs}"
                )
        tried.append(precision or "default")
    return tried


def ir_weight_types(bundle: Bundle) -> dict[str, set[str]]:
    """Op type -> the element types of the constants behind its weights (input 1) in an
    OpenVINO bundle's IR: ``i8`` for int8 weights (i8 constant -> Convert -> Multiply by the
    scale), ``f32`` for a float constant."""
    from fer_edge.runtimes.openvino import OpenVinoGraph, import_openvino

    ov = import_openvino()
    model = OpenVinoGraph._read(ov, ov.Core(), bundle.graph)
    found: dict[str, set[str]] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("Convolution", "MatMul"):
            continue
        node = op.input(1).get_source_output().get_node()
        while node.get_type_name() in ("Multiply", "Convert"):  # down to the stored constant
            node = node.input(0).get_source_output().get_node()
        found.setdefault(op.get_type_name(), set()).add(node.get_element_type().get_type_name())
    return found

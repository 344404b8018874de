"""Inference backends: parity with a numpy reference, batching, int8, threads, bad models."""

from __future__ import annotations

import numpy as np
import pytest
from sdk_helpers import make_bundle, reference, weights

from fer_edge.bundle import save_bundle
from fer_edge.errors import BundleError, FerEdgeError, RuntimeBackendError
from fer_edge.preprocess import PreprocessSpec
from fer_edge.runtimes import available_backends, load_runtime
from fer_edge.runtimes.tflite import _dequantize, _quantize

BACKENDS = available_backends()
CASES = [  # (format, tflite options, backend)
    ("onnx", {}, "onnxruntime"),
    ("onnx", {}, "openvino"),
    ("tflite", {}, "tflite"),
    ("tflite", {}, "openvino"),
    ("tflite", {"nhwc": True}, "tflite"),
    ("tflite", {"nhwc": True}, "openvino"),
    ("tflite", {"fixed_batch": True}, "tflite"),
    ("tflite", {"fixed_batch": True}, "openvino"),
]


def _need(backend: str) -> None:
    if backend not in BACKENDS:
        pytest.skip(f"backend {backend} is not installed")


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(1).uniform(-1, 1, (5, 1, 48, 48)).astype(np.float32)


@pytest.mark.parametrize(("fmt", "options", "backend"), CASES)
def test_backend_matches_reference(tmp_path, batch, fmt, options, backend):
    _need(backend)
    rt = load_runtime(make_bundle(tmp_path, fmt, **options), backend, num_threads=1)
    ref = reference(batch, *weights())
    np.testing.assert_allclose(rt.run(batch), ref, atol=1e-4)
    np.testing.assert_allclose(rt.run(batch[:1]), ref[:1], atol=1e-4)  # batch size changes back
    np.testing.assert_allclose(rt.run(batch[:3]), ref[:3], atol=1e-4)
    assert rt.run(batch[:0]).shape == (0, 7)


def test_full_int8_tflite_quantises_input_and_output(tmp_path, batch):
    _need("tflite")
    rt = load_runtime(make_bundle(tmp_path, "tflite", precision="int8", int8=True), "tflite")
    ref = reference(batch, *weights())
    out = rt.run(batch)
    assert out.dtype == np.float32
    # Input step 2/255, output step 0.05: within a few output steps of the float model.
    assert np.abs(out - ref).max() < 0.1
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.8


def test_quantise_round_trip():
    detail = {"name": "x", "dtype": np.int8, "quantization": (0.1, -3)}
    x = np.array([-20.0, -1.0, 0.0, 0.26, 50.0], np.float32)
    q = _quantize(x, detail)
    assert q.dtype == np.int8 and q.tolist() == [-128, -13, -3, 0, 127]  # clipped at both ends
    np.testing.assert_allclose(_dequantize(q, detail), [-12.5, -1.0, 0.0, 0.3, 13.0], atol=1e-6)


def test_openvino_refuses_int8_input_clearly(tmp_path):
    _need("openvino")
    bundle = make_bundle(tmp_path, "tflite", precision="int8", int8=True)
    with pytest.raises(RuntimeBackendError, match="tflite backend"):
        load_runtime(bundle, "openvino")


def test_auto_picks_an_installed_backend_for_the_format(tmp_path):
    onnx_rt = load_runtime(make_bundle(tmp_path, "onnx"), "auto")
    assert onnx_rt.name in {"openvino", "onnxruntime"}
    if "tflite" in BACKENDS:
        assert load_runtime(make_bundle(tmp_path, "tflite"), "auto").name == "tflite"
    with pytest.raises(RuntimeBackendError, match="cannot run 'onnx'"):
        load_runtime(make_bundle(tmp_path, "onnx"), "tflite")
    with pytest.raises(RuntimeBackendError, match="unknown backend"):
        load_runtime(make_bundle(tmp_path, "onnx"), "tensorrt")


def test_threads_and_precision_are_passed_to_the_backend(tmp_path):
    ort_rt = load_runtime(make_bundle(tmp_path, "onnx"), "onnxruntime", num_threads=1)
    assert ort_rt.session.get_session_options().intra_op_num_threads == 1
    if "openvino" in BACKENDS:
        ov_rt = load_runtime(make_bundle(tmp_path, "onnx"), "openvino", num_threads=1)
        compiled = ov_rt.graph._compiled
        assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
        assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"


@pytest.mark.parametrize(
    ("fmt", "backend"),
    [("onnx", "onnxruntime"), ("onnx", "openvino"), ("tflite", "tflite"), ("tflite", "openvino")],
)
def test_labels_that_do_not_match_the_graph_are_refused(tmp_path, fmt, backend):
    _need(backend)
    bundle = make_bundle(tmp_path, fmt, labels=("a", "b", "c", "d", "e"), num_outputs=7)
    with pytest.raises(BundleError, match="lists 5 labels but its graph .* outputs 7"):
        load_runtime(bundle, backend)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize(
    ("fmt", "backend"),
    [("onnx", "onnxruntime"), ("onnx", "openvino"), ("tflite", "tflite"), ("tflite", "openvino")],
)
def test_broken_model_files_raise_typed_errors(tmp_path, fmt, backend, damage):
    _need(backend)
    good = make_bundle(tmp_path / "good", fmt)
    data = good.graph.read_bytes()
    bad = {
        "truncated": data[: len(data) // 3],
        "garbage": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "empty": b"",
    }[damage]
    # Re-saved with matching hashes, so the damage reaches the backend itself.
    bundle = save_bundle(
        tmp_path / "bad",
        {good.graph.name: bad},
        labels=good.labels,
        preprocess=PreprocessSpec(),
        model={"format": fmt, "file": good.graph.name, "precision": "fp32"},
    )
    with pytest.raises(FerEdgeError):
        load_runtime(bundle, backend).run(np.zeros((1, 1, 48, 48), np.float32))


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 1, 32, 32), np.float32), np.zeros((1, 48, 48), np.float32), [[0.0]]]
)
def test_wrong_input_shape_is_refused(tmp_path, bad):
    rt = load_runtime(make_bundle(tmp_path, "onnx"), "onnxruntime")
    with pytest.raises(RuntimeBackendError, match="input must be float32"):
        rt.run(bad)


def test_tflite_backend_reports_a_missing_runtime(monkeypatch, tmp_path):
    import builtins

    from fer_edge.runtimes import tflite

    real_import = builtins.__import__

    def no_litert(name, *args, **kwargs):
        if name.startswith(("ai_edge_litert", "tflite_runtime")):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_litert)
    with pytest.raises(RuntimeBackendError, match="ai-edge-litert"):
        tflite.interpreter_class()


def test_pytorch_bundles_are_pointed_to_export(tmp_path):
    bundle = save_bundle(
        tmp_path / "pt",
        {"model.pt": b"not used"},
        labels=("a", "b"),
        preprocess=PreprocessSpec(),
        model={"format": "pytorch", "file": "model.pt", "precision": "fp32"},
    )
    with pytest.raises(RuntimeBackendError, match="export"):
        load_runtime(bundle)

"""OpenVINO on every x86 CPU: the shipped bundles compile and agree under each inference
precision OpenVINO can choose here (see ``check_openvino_bundle`` for what a CPU without bf16
covers), the runtime compiles with the hints a bundle records, and a compile failure says
which check failed in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sdk_helpers import check_openvino_bundle, make_bundle

from fer_edge.bundle import load_bundle, save_bundle
from fer_edge.data import load_dataset
from fer_edge.errors import BundleError, RuntimeBackendError, backend_reason
from fer_edge.runtimes import load_runtime

ov = pytest.importorskip("openvino")

from fer_edge.runtimes.openvino import cpu_precisions  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "fer_edge" / "models"
SHIPPED = sorted(
    d.name
    for d in MODELS.iterdir()
    if (d / "model.json").is_file()
    and json.loads((d / "model.json").read_text())["model"]["format"] == "openvino"
)


def test_the_project_ships_openvino_bundles():
    assert SHIPPED, "no OpenVINO bundle shipped: the precision check below would check nothing"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_openvino_bundle_compiles_and_agrees_under_every_cpu_precision(name, small_fer_dir):
    faces = load_dataset(small_fer_dir, "val").images
    tried = check_openvino_bundle(load_bundle(MODELS / name), faces, min_agreement=0.97)
    assert tried[:2] == ["default", "f32"]
    assert ("bf16" in tried) == ("bf16" in cpu_precisions())


def _with_hints(bundle, hints, out: Path):
    meta = bundle.meta
    files = {rel: bundle.root / rel for rel in meta["files"]}
    model = {**meta["model"], "runtime_hints": {"openvino": hints}}
    return save_bundle(out, files, labels=meta["labels"], preprocess=bundle.preprocess, model=model)


def test_runtime_compiles_with_the_hints_the_bundle_records(tmp_path):
    base = make_bundle(tmp_path, "onnx")
    plain = load_runtime(base, "openvino")
    assert plain.hints == {"INFERENCE_PRECISION_HINT": "f32"}  # no hints recorded: f32
    compiled = plain.graph._compiled.get_property("INFERENCE_PRECISION_HINT")
    assert str(compiled) == str(ov.Type.f32)
    want = cpu_precisions()[-1]  # bf16 where the CPU has it, else f32
    rt = load_runtime(
        _with_hints(base, {"INFERENCE_PRECISION_HINT": want}, tmp_path / "h"), "openvino"
    )
    assert rt.hints["INFERENCE_PRECISION_HINT"] == want
    compiled = rt.graph._compiled.get_property("INFERENCE_PRECISION_HINT")
    assert str(compiled) == str(ov.Type.bf16 if want == "bf16" else ov.Type.f32)


@pytest.mark.parametrize(
    "hints", [{"INFERENCE_PRECISION_HINT": "int4"}, {"CACHE_DIR": "/tmp"}, ["f32"]]
)
def test_bundle_with_unknown_openvino_hints_is_refused(tmp_path, hints):
    bundle = _with_hints(make_bundle(tmp_path, "onnx"), hints, tmp_path / "bad")
    with pytest.raises(BundleError, match="runtime_hints.openvino"):
        load_runtime(bundle, "openvino")


def test_openvino_input_with_every_dimension_dynamic_is_fixed_but_the_batch(tmp_path):
    """The IR the old exporter wrote: [?,?,?,?]. The runtime fixes channels and size from the
    bundle's preprocessing, so the CPU plugin compiles it at any precision."""
    src = load_bundle(MODELS / SHIPPED[0])
    model = ov.Core().read_model(str(src.graph))
    model.reshape({model.inputs[0]: ov.PartialShape.dynamic(4)})
    ir = tmp_path / "ir"
    ir.mkdir()
    ov.save_model(model, str(ir / "model.xml"), compress_to_fp16=False)
    meta = src.meta
    bundle = save_bundle(
        tmp_path / "dynamic",
        {"model.xml": ir / "model.xml", "model.bin": ir / "model.bin"},
        labels=meta["labels"],
        preprocess=src.preprocess,
        model=meta["model"],
    )
    rt = load_runtime(bundle, "openvino")
    assert rt.graph.input_shape == (-1, 1, 48, 48)
    faces = np.random.default_rng(0).uniform(-1, 1, (3, 1, 48, 48)).astype(np.float32)
    np.testing.assert_allclose(rt.run(faces), load_runtime(src, "openvino").run(faces), atol=1e-5)


# What a user saw on an AMD EPYC (Zen 4) with OpenVINO 2026.4.1 before the fix.
OPENVINO_FAILURE = """Exception from src/inference/src/cpp/core.cpp:117:
Exception from src/inference/src/dev/plugin.cpp:54:
Check '!implementations.empty()' failed at src/plugins/intel_cpu/src/nodes/executors/executor_factory.hpp:117:
No suitable implementations.This may indicate that the provided memory descriptors are not compatible with any implementation.

"""


def test_backend_reason_keeps_the_line_that_says_what_failed():
    assert (
        backend_reason(RuntimeError(OPENVINO_FAILURE))
        == "Check '!implementations.empty()' failed: No suitable implementations"
    )
    assert backend_reason(RuntimeError("")) == "RuntimeError"
    assert len(backend_reason(RuntimeError("x" * 5000))) == 240


def test_openvino_compile_failure_is_one_line_with_what_to_do(tmp_path, monkeypatch):
    bundle = make_bundle(tmp_path, "onnx")
    real = ov.Core.compile_model

    def failing(self, *args, **kwargs):
        raise RuntimeError(OPENVINO_FAILURE)

    monkeypatch.setattr(ov.Core, "compile_model", failing)
    with pytest.raises(RuntimeBackendError) as e:
        load_runtime(bundle, "openvino")
    msg = str(e.value)
    assert "\n" not in msg and "No suitable implementations" in msg
    assert "backend='tflite' or 'onnxruntime'" in msg and "at f32" in msg
    monkeypatch.setattr(ov.Core, "compile_model", real)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_corrupt_graph_error_is_one_line(tmp_path, backend):
    """A real backend failure (a truncated graph), not a scripted one: one line, no C++ frames."""
    bundle = make_bundle(tmp_path, "onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(bundle.graph.read_bytes()[:1000])
    b = save_bundle(
        tmp_path / "truncated",
        {broken.name: broken},
        labels=bundle.labels,
        preprocess=bundle.preprocess,
        model={**bundle.meta["model"], "file": broken.name},
    )
    with pytest.raises(RuntimeBackendError) as e:
        load_runtime(b, backend)
    msg = str(e.value)
    assert "\n" not in msg and "Exception from src" not in msg and broken.name in msg

"""scripts/count_macs.py (MACs from ONNX and TFLite graphs, for the on-paper Pi latency) and
scripts/arm64_parity.py (the face set and the comparison behind docs/results/arm64.json)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sdk_helpers import SIZE, onnx_classifier, tflite_classifier

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


count_macs = _script("count_macs")
parity = _script("arm64_parity")


def _conv_onnx(path: Path, cin: int, cout: int, groups: int, hw: int = 8) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.zeros((cout, cin // groups, 3, 3), np.float32)
    node = helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1], group=groups)
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", cin, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_linear_graph_macs_are_outputs_times_inputs_in_onnx_and_tflite(tmp_path):
    expected = 7 * SIZE * SIZE
    onnx_path = onnx_classifier(tmp_path / "lin.onnx", 7)
    tfl_path = tflite_classifier(tmp_path / "lin.tflite", 7)
    assert count_macs.count(onnx_path)["macs"] == expected
    assert count_macs.count(tfl_path)["macs"] == expected


@pytest.mark.parametrize(("cin", "cout", "groups"), [(4, 6, 1), (4, 4, 4), (4, 8, 2)])
def test_conv_macs_count_each_output_times_its_kernel_and_group(tmp_path, cin, cout, groups):
    path = _conv_onnx(tmp_path / "conv.onnx", cin, cout, groups)
    assert count_macs.count(path)["macs"] == (cout * 8 * 8) * (cin // groups) * 9


def test_the_shipped_default_has_the_same_macs_as_onnx_and_as_tflite():
    onnx_macs = count_macs.count(REPO / "fer_edge/models/default/model.onnx")["macs"]
    tfl_macs = count_macs.count(REPO / "fer_edge/models/default_tflite/model.tflite")["macs"]
    assert onnx_macs == tfl_macs > 1_000_000


def test_macs_of_an_unknown_format_are_refused(tmp_path):
    with pytest.raises(count_macs.MacCountError, match="only .onnx and .tflite"):
        count_macs.count(tmp_path / "model.xml")
    r = subprocess.run(
        [sys.executable, str(REPO / "scripts/count_macs.py"), str(tmp_path / "model.bin")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and r.stderr.startswith("count_macs: error:")


def _classes(root: Path, counts: dict[str, int]) -> Path:
    for c, n in counts.items():
        (root / c).mkdir(parents=True)
        for i in range(n):
            (root / c / f"{i:03d}.jpg").write_bytes(b"")
    return root


def test_face_set_is_stratified_fixed_by_seed_and_refuses_a_short_class(tmp_path):
    root = _classes(tmp_path / "d", {"angry": 10, "happy": 10, "sad": 3})
    faces = parity.pick_faces(root, 8, seed=0)
    per_class = {c: sum(f.startswith(c + "/") for f in faces) for c in ("angry", "happy", "sad")}
    assert per_class == {"angry": 3, "happy": 3, "sad": 2}
    assert faces == parity.pick_faces(root, 8, seed=0)
    assert faces != parity.pick_faces(root, 8, seed=1)
    assert all((root / f).is_file() for f in faces)
    with pytest.raises(parity.ParityError, match="sad has 3 faces, 4 wanted"):
        parity.pick_faces(root, 12, seed=0)


def _scores(probs, faces=("a/1", "a/2", "b/1", "b/2"), precision="fp32") -> dict:
    return {
        "faces": list(faces),
        "pixels_sha256": "x",
        "bundles": {"m": {"backend": "onnxruntime", "precision": precision, "probs": probs}},
    }


def test_comparison_counts_top1_flips_and_the_largest_probability_gap():
    a = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    b = a.copy()
    b[2] = [0.45, 0.55]  # one of four faces changes its top-1 class
    same = parity.compare(_scores(a.tolist()), _scores(a.tolist()))["bundles"]["m"]
    assert same["top1_agreement"] == 1.0 and same["max_prob_diff"] == 0 and same["passed"]
    diff = parity.compare(_scores(a.tolist()), _scores(b.tolist()))["bundles"]["m"]
    assert diff["top1_agreement"] == 0.75 and not diff["passed"]
    assert diff["max_prob_diff"] == pytest.approx(0.15)
    int8 = parity.compare(_scores(a.tolist(), precision="int8"), _scores(b.tolist()))
    assert int8["bundles"]["m"]["goal"] == 0.98


def test_comparison_refuses_scores_of_different_faces_and_reports_a_missing_backend():
    a = [[1.0, 0.0]] * 4
    with pytest.raises(parity.ParityError, match="different faces"):
        parity.compare(_scores(a), _scores(a, faces=("a/1", "a/2", "b/1", "c/9")))
    other = _scores(a)
    other["bundles"]["m"] = {"backend": "openvino", "precision": "int8", "error": "ImportError: x"}
    assert parity.compare(_scores(a), other)["bundles"]["m"]["error"] == "ImportError: x"


def test_predict_comparison_flags_a_photo_whose_faces_differ():
    face = {"box": [0, 0, 10, 10], "label": "happy", "scores": {"happy": 0.9, "sad": 0.1}}
    moved = face | {"box": [1, 0, 10, 12], "scores": {"happy": 0.8, "sad": 0.2}}
    ref = [{"source": "p/one.jpg", "faces": [face]}, {"source": "p/two.jpg", "faces": [face]}]
    same = parity.compare_predict(ref, [{"source": "one.jpg", "faces": [moved]}, ref[1]])
    assert same["same_faces_and_labels"]
    assert same["per_photo"]["one.jpg"]["max_box_diff_px"] == 2
    assert same["per_photo"]["one.jpg"]["max_score_diff"] == pytest.approx(0.1)
    lost = parity.compare_predict(ref, [ref[0], {"source": "two.jpg", "faces": []}])
    assert not lost["same_faces_and_labels"]
    relabelled = parity.compare_predict(ref, [ref[0], {"faces": [face | {"label": "sad"}]}])
    assert not relabelled["same_faces_and_labels"]


def test_junit_counts_separate_passed_failed_and_skipped(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1">'
        '<testcase classname="t" name="a"/><testcase classname="t" name="b"><failure/></testcase>'
        '<testcase classname="t" name="c"><skipped message="no openvino"/></testcase>'
        '<testcase classname="t" name="d"/></testsuite></testsuites>'
    )
    n = parity.junit_counts(xml)
    assert (n["run"], n["passed"], n["failed"], n["skipped"]) == (4, 2, 1, 1)
    assert n["failed_tests"] == ["t::b"] and n["skip_reasons"] == ["no openvino"]
    assert json.dumps(n)  # goes into the report as is


def test_pi_estimate_adds_detector_classifier_and_python_at_the_assumed_rates():
    est = count_macs.pi_estimate(detector_macs=30_000_000, classifier_macs=12_000_000)
    for core, rates in count_macs.CORES.items():
        row = est[core]
        assert row["detect_ms"] == pytest.approx(30 / rates["fp32"], abs=0.05)
        assert row["classify_int8_ms"] == pytest.approx(12 / rates["int8"], abs=0.05)
        assert row["frame_int8_ms"] == pytest.approx(
            row["detect_ms"] + row["classify_int8_ms"] + row["python_ms"], abs=0.15
        )
    pi4, pi5 = (est[c]["frame_int8_ms"] for c in count_macs.CORES)
    assert pi5 < pi4  # the A76 is assumed faster in every term
    assert count_macs.pi_estimate(60_000_000, 24_000_000)[core]["classify_fp32_ms"] == (
        pytest.approx(2 * row["classify_fp32_ms"], abs=0.1)
    )

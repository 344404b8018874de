import json
import os

import pytest

from fer_edge.bundle import load_bundle, save_bundle, seal
from fer_edge.errors import BundleError
from fer_edge.labels import FER_LABELS
from fer_edge.preprocess import PreprocessSpec


@pytest.fixture
def bundle_dir(tmp_path):
    save_bundle(
        tmp_path / "b",
        {"model.onnx": b"graph bytes" * 100, "extra/notes.txt": b"hello"},
        labels=FER_LABELS,
        preprocess=PreprocessSpec(size=64),
        model={"format": "onnx", "file": "model.onnx", "precision": "fp32"},
        source={"checkpoint": "x.pt"},
        metrics={"test": {"accuracy": 0.5}},
    )
    return tmp_path / "b"


def _edit_meta(root, fn):
    """Edit model.json and recompute its manifest hash, as a writer of bundles would."""
    meta = json.loads((root / "model.json").read_text())
    fn(meta)
    (root / "model.json").write_text(json.dumps(seal(meta)))


def test_round_trip(bundle_dir):
    b = load_bundle(bundle_dir)
    assert b.labels == FER_LABELS and b.format == "onnx" and b.precision == "fp32"
    assert b.preprocess.size == 64
    assert b.graph == bundle_dir / "model.onnx"
    assert set(b.meta["files"]) == {"model.onnx", "extra/notes.txt"}
    assert load_bundle(bundle_dir / "model.json").root == bundle_dir


def test_hash_mismatch_and_truncation_are_refused(bundle_dir):
    graph = bundle_dir / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[10] ^= 0x01
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bundle_dir)
    graph.write_bytes(b"")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bundle_dir)
    graph.unlink()
    with pytest.raises(BundleError, match="missing its file"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.pop("labels"), "lacks the field 'labels'"),
        (lambda m: m.update(labels="happy"), "wrong type"),
        (lambda m: m.update(labels=["a", "a"]), "duplicates"),
        (lambda m: m.update(schema_version=99), "not supported"),
        (lambda m: m["model"].update(format="caffe"), "model.format"),
        (lambda m: m["model"].update(file="other.onnx"), "not listed"),
        (lambda m: m["preprocess"].update(channels=5), "preprocess"),
        (lambda m: m["files"].update({"../escape.onnx": "0" * 64}), "escapes"),
        (lambda m: m["files"].update({"/etc/passwd": "0" * 64}), "escapes"),
        (lambda m: m["files"].update({"model.onnx": "abc"}), "sha256 hex"),
    ],
)
def test_malformed_meta_is_refused(bundle_dir, edit, message):
    _edit_meta(bundle_dir, edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_dir)


def test_not_json_and_not_a_bundle(bundle_dir, tmp_path):
    (bundle_dir / "model.json").write_text("{ not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="no model.json"):
        load_bundle(tmp_path)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "missing")


def test_symlinked_file_is_refused(bundle_dir, tmp_path):
    outside = tmp_path / "outside.onnx"
    outside.write_bytes((bundle_dir / "model.onnx").read_bytes())
    (bundle_dir / "model.onnx").unlink()
    os.symlink(outside, bundle_dir / "model.onnx")
    with pytest.raises(BundleError, match="symbolic link"):
        load_bundle(bundle_dir)


def test_failed_save_leaves_old_bundle_intact(bundle_dir):
    before = (bundle_dir / "model.json").read_text()
    with pytest.raises(BundleError):
        save_bundle(
            bundle_dir,
            {"model.onnx": b"new"},
            labels=FER_LABELS,
            preprocess=PreprocessSpec(),
            model={"format": "onnx", "file": "missing.onnx"},  # invalid: refused before the swap
        )
    assert (bundle_dir / "model.json").read_text() == before
    load_bundle(bundle_dir)
    assert not [p for p in bundle_dir.parent.iterdir() if p.name.startswith(".")]

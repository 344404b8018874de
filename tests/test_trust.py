"""Trust (issue 17): every byte a runtime reads is listed, hashed and confined; a replaced
bundle never disappears; no input exhausts memory, hangs or ends in a traceback."""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sdk_helpers import make_bundle, reference, weights, wrap_onnx

from fer_edge import Recognizer, atomic
from fer_edge.bundle import default_bundle_path, load_bundle, seal, shipped_models
from fer_edge.cli import main
from fer_edge.data import IMAGE_FORMATS, MAX_DECODED_BYTES, load_dataset, read_image
from fer_edge.errors import BundleError, BusyError, DatasetError, InputError, RuntimeBackendError
from fer_edge.labels import FER_LABELS
from fer_edge.preprocess import PreprocessSpec, preprocess

FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _meta(root: Path) -> dict:
    return json.loads((root / "model.json").read_text())


# ------------------------------------------------------------------ image formats and bombs


def _no_decoder(monkeypatch) -> list:
    calls = []
    monkeypatch.setattr("fer_edge.data.cv2.imdecode", lambda *a: calls.append(1))
    return calls


def test_a_radiance_hdr_named_png_is_refused_before_decoding(tmp_path, monkeypatch):
    """The issue's bomb: 4 MB of run-length HDR declaring 16384 x 4096 float pixels (1.6 GB
    decoded). imagesize cannot read HDR headers, so the name used to decide."""
    path = tmp_path / "face.png"
    header = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 4096 +X 16384\n"
    path.write_bytes(header + b"\x02\x02\x40\x00" + b"\x80\x00" * 64)
    decoded = _no_decoder(monkeypatch)
    assert read_image(path) is None
    assert not decoded, "an HDR file reached OpenCV's decoder"


# first bytes of formats OpenCV decodes that fer-edge does not read
FOREIGN = [
    b"#?RADIANCE\n",
    b"#?RGBE\n",
    b"v/1\x01",  # OpenEXR
    b"\x00\x00\x00\x0cjP  \r\n\x87\n",  # JPEG 2000
    b"\xff\x4f\xff\x51",  # JPEG 2000 codestream
    b"PF\n",  # portable float map
    b"\x59\xa6\x6a\x95",  # Sun raster
    b"GIF89a",
]


@FUZZ
@given(
    head=st.sampled_from(FOREIGN) | st.binary(min_size=0, max_size=16),
    tail=st.binary(max_size=256),
    ext=st.sampled_from([".jpg", ".png", ".bmp", ".webp", ".tiff", ".pgm"]),
)
def test_files_that_are_not_an_allowed_format_never_reach_the_decoder(
    tmp_path_factory, monkeypatch, head, tail, ext
):
    data = head + tail
    known = any(data.startswith(m) for magics, _ in IMAGE_FORMATS.values() for m in magics)
    path = tmp_path_factory.mktemp("fmt") / f"x{ext}"
    path.write_bytes(data)
    decoded = _no_decoder(monkeypatch)
    img = read_image(path)
    if not known:
        assert img is None and not decoded


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp", ".tiff", ".pgm"])
def test_every_allowed_format_of_a_real_face_decodes_whatever_its_name(fer2013_root, tmp_path, ext):
    face = cv2.imread(str(next((fer2013_root / "test" / "happy").iterdir())), cv2.IMREAD_GRAYSCALE)
    ok, buf = cv2.imencode(ext, face)
    assert ok
    path = tmp_path / "face.jpg"  # the name is wrong for all but one: the bytes decide
    path.write_bytes(buf.tobytes())
    img = read_image(path)
    assert img is not None and img.shape[:2] == face.shape
    if ext in (".png", ".bmp", ".tiff", ".pgm"):  # lossless
        np.testing.assert_array_equal(img.reshape(face.shape), face)


def test_a_deep_png_is_capped_by_its_decoded_size(tmp_path, monkeypatch):
    """6000 x 6000 is under the pixel cap (67 MP) but a 16-bit RGBA PNG of that size decodes
    to 288 MB, over the decoded-size budget: refused from the header."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", 6000, 6000, 16, 6, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 99))
    path = tmp_path / "deep.png"
    path.write_bytes(data + chunk(b"IEND", b""))
    assert 6000 * 6000 * IMAGE_FORMATS["png"][1] > MAX_DECODED_BYTES
    decoded = _no_decoder(monkeypatch)
    assert read_image(path) is None and not decoded


# ------------------------------------------------------------------------------- memory


def _huge_tflite(tmp_path: Path) -> Path:
    """The shipped INT8 TFLite graph with one internal tensor's shape rewritten to 2^31
    elements (the file stays 320 KB)."""
    data = bytearray((default_bundle_path(backend="tflite") / "model.tflite").read_bytes())
    at = data.find(struct.pack("<4i", 1, 48, 48, 1))
    assert at > 0
    data[at : at + 16] = struct.pack("<4i", 1, 46341, 46341, 1)
    path = tmp_path / "huge.tflite"
    path.write_bytes(bytes(data))
    return path


def test_a_tflite_declaring_a_2_31_element_tensor_is_refused_before_allocating(tmp_path):
    """In a child process capped at 2 GB of address space beyond its start: before, the load
    allocated 8.25 GB (MemoryError or a kill here); now a typed error, a few MB of growth."""
    path = _huge_tflite(tmp_path)
    code = f"""
import resource, sys
from fer_edge.errors import RuntimeBackendError
from fer_edge.runtimes.tflite import TfliteGraph
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    TfliteGraph({str(path)!r})
    print("loaded")
except RuntimeBackendError as e:
    print("refused:", e)
print("growth_mb", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""
    limit = 3 << 30

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, preexec_fn=cap
    )
    assert "refused:" in proc.stdout and "MB of tensors" in proc.stdout, proc.stderr[-1500:]
    growth = float(proc.stdout.split("growth_mb")[1])
    assert growth < 100


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("tiny"), "onnx")


def test_classify_of_many_crops_runs_in_bounded_batches(tiny, fer2013_root):
    from fer_edge.recognizer import BATCH

    rec = Recognizer(tiny, backend="onnxruntime", detector=None, num_threads=1)
    faces = [
        cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        for p in sorted((fer2013_root / "test" / "sad").iterdir())[:50]
    ]
    seen = []
    run = rec.runtime.run
    rec.runtime.run = lambda x: (seen.append(len(x)), run(x))[1]
    out = rec.classify(faces * 60)  # 3,000 crops
    assert len(out) == 3000 and max(seen) <= BATCH and sum(seen) == 3000
    expected = reference(preprocess(faces, PreprocessSpec()), *weights())
    probs = np.stack([f.probs for f in out[:50]])
    np.testing.assert_allclose(
        np.log(probs) - np.log(probs)[:, :1], expected - expected[:, :1], atol=1e-3
    )
    np.testing.assert_allclose(np.stack([f.probs for f in out[-50:]]), probs, atol=1e-6)


# -------------------------------------------------------------------------- bundle integrity


@pytest.fixture
def onnx_default(tmp_path):
    return _copy(default_bundle_path(backend="onnxruntime"), tmp_path / "b")


def test_verify_catches_swapped_labels(onnx_default, media_root, capsys):
    """Swapped labels used to verify ok and turn a smiling portrait into 'sad'."""
    portrait = cv2.imread(str(media_root / "portrait.jpg"))
    before = Recognizer(onnx_default, backend="onnxruntime")(portrait)[0].label
    meta = _meta(onnx_default)
    labels = meta["labels"]
    i, j = labels.index("happy"), labels.index("sad")
    labels[i], labels[j] = labels[j], labels[i]
    (onnx_default / "model.json").write_text(json.dumps(meta, indent=2))
    assert main(["verify", str(onnx_default)]) == 2
    assert "manifest" in capsys.readouterr().err
    with pytest.raises(BundleError, match="manifest"):
        Recognizer(onnx_default, backend="onnxruntime")
    assert before == "happy"


@FUZZ
@given(data=st.data())
def test_any_edit_of_model_json_fails_the_manifest_check(tmp_path_factory, data):
    root = _copy(default_bundle_path(backend="onnxruntime"), tmp_path_factory.mktemp("m") / "b")
    meta = _meta(root)
    key = data.draw(st.sampled_from(sorted(k for k in meta if k != "integrity")))
    value = data.draw(
        st.none()
        | st.booleans()
        | st.integers(-5, 5)
        | st.text(max_size=5)
        | st.lists(st.text(max_size=3), max_size=3)
    )
    if meta[key] == value:
        return
    meta[key] = value
    (root / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError):
        load_bundle(root)


def test_verify_prints_the_manifest_and_checks_an_expected_one(onnx_default, capsys):
    assert main(["verify", str(onnx_default)]) == 0
    manifest = _meta(onnx_default)["integrity"]["manifest"]
    assert manifest in capsys.readouterr().out
    assert main(["verify", str(onnx_default), "--expect", manifest]) == 0
    assert main(["verify", str(onnx_default), "--expect", "0" * 64]) == 2
    assert "expected" in capsys.readouterr().err


def test_a_bundle_from_before_manifests_is_refused_until_resealed(onnx_default, capsys):
    meta = _meta(onnx_default)
    del meta["integrity"]
    (onnx_default / "model.json").write_text(json.dumps(meta))
    assert main(["verify", str(onnx_default)]) == 2
    assert "--reseal" in capsys.readouterr().err
    assert main(["verify", "--reseal", str(onnx_default)]) == 0
    assert load_bundle(onnx_default).meta["integrity"] == seal(meta)["integrity"]
    (onnx_default / "model.onnx").write_bytes(b"changed")  # the files are still checked
    assert main(["verify", "--reseal", str(onnx_default)]) == 2


@pytest.mark.parametrize("case", ["unlisted", "symlink"])
def test_openvino_weights_are_listed_hashed_and_confined(tmp_path, case):
    pytest.importorskip("openvino")
    # the IR bundle by name: on aarch64 OpenVINO's default is the FP32 ONNX one (no .bin)
    root = _copy(shipped_models() / "default_openvino", tmp_path / "b")
    if case == "unlisted":
        meta = _meta(root)
        del meta["files"]["model.bin"]
        (root / "model.json").write_text(json.dumps(seal(meta)))
        match = "does not list 'model.bin'"
    else:  # unlisted, and a link out of the bundle (to the very same bytes)
        meta = _meta(root)
        del meta["files"]["model.bin"]
        (root / "model.json").write_text(json.dumps(seal(meta)))
        outside = tmp_path / "elsewhere.bin"
        shutil.copy(root / "model.bin", outside)
        (root / "model.bin").unlink()
        (root / "model.bin").symlink_to(outside)
        match = "does not list 'model.bin'"
    with pytest.raises(BundleError, match=match):
        Recognizer(root, backend="openvino")
    assert main(["verify", str(root)]) == 2


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_runtime_opens_no_file_the_bundle_does_not_list(tmp_path, backend):
    """An ONNX graph whose weights live in an external-data file that is not in ``files``:
    the runtime gets the verified bytes only, so it cannot read the unlisted file."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip(backend)
    src = tmp_path / "src"
    src.mkdir()
    graph = onnx.load(str(make_bundle(tmp_path / "m", "onnx").graph))
    onnx.save_model(graph, str(src / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.data", size_threshold=0)  # fmt: skip
    root = wrap_onnx(tmp_path / "b", src / "model.onnx")
    shutil.copy(src / "weights.data", root / "weights.data")  # there, but not listed
    with pytest.raises(RuntimeBackendError):
        Recognizer(root, backend=backend, detector=None)


def _small_bundle(root: Path, tag: bytes) -> None:
    wrap_onnx(root, tag * 64)


def test_a_replaced_bundle_never_disappears(tmp_path):
    """A reader in another process stats the bundle's model.json in a loop while this one
    replaces the bundle 300 times: every look finds it (two renames left a gap)."""
    if not atomic.exchange(tmp_path, tmp_path):  # probe: same path swap is a no-op
        pytest.skip("no renameat2(RENAME_EXCHANGE) here: the documented fallback applies")
    root = tmp_path / "bundle"
    _small_bundle(root, b"a")
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", f"""
import os
looks = missing = 0
while not os.path.exists({str(stop)!r}):
    looks += 1
    missing += not os.path.exists({str(root / "model.json")!r})
print(looks, missing)
"""],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.3)
    for i in range(300):
        _small_bundle(root, bytes([i % 256]))
    stop.touch()
    looks, missing = map(int, reader.communicate(timeout=60)[0].split())
    assert looks > 1000 and missing == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".bundle")] == []


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_leftovers_of_a_killed_swap_are_recovered_on_the_next_write(tmp_path):
    """A kill between the fallback's two renames leaves ``.NAME.old.PID`` and the new folder
    as ``.NAME.PID.x.tmp``; the next write puts the old bundle back first, then replaces it,
    and removes both."""
    root = tmp_path / "bundle"
    _small_bundle(root, b"o")
    pid = _dead_pid()
    os.rename(root, tmp_path / f".bundle.old.{pid}")
    (tmp_path / f".bundle.{pid}.abc123.tmp").mkdir()
    atomic.recover_dir(root)
    assert load_bundle(root).graph.read_bytes() == b"o" * 64
    os.rename(root, tmp_path / f".bundle.old.{pid}")
    (tmp_path / f".bundle.{pid}.abc123.tmp").mkdir()
    _small_bundle(root, b"n")
    assert load_bundle(root).graph.read_bytes() == b"n" * 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_the_fallback_swap_without_renameat2_still_replaces(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    root = tmp_path / "bundle"
    _small_bundle(root, b"a")
    _small_bundle(root, b"b")
    assert load_bundle(root).graph.read_bytes() == b"b" * 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_a_second_training_into_the_same_run_folder_is_refused(small_fer_dir, tmp_path, capsys):
    """While another process holds the run folder (a running ``fer-edge train --out``), a
    second run into it exits 2 naming the problem and writes nothing there."""
    pytest.importorskip("torch", reason="training needs the train extra (torch)")
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"""
import sys, time
from fer_edge.atomic import lock_folder
lock_folder({str(run)!r}); print("locked", flush=True); time.sleep(60)
"""],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["train", "--data", str(small_fer_dir), "--epochs", "1", "--arch", "vgg_small"]
        assert main([*argv, "--no-progress", "--out", str(run)]) == 2
        assert "in use by another process" in capsys.readouterr().err
        assert list(run.iterdir()) == []
        with pytest.raises(BusyError):
            atomic.lock_folder(run)
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------ typed errors: model.json


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t.replace('"size": 48', '"size": Infinity'),
        lambda t: t.replace('"face_margin": 0.15', '"face_margin": NaN'),
        lambda t: t.replace('"size": 48', '"size": ' + "9" * 5000),
        lambda t: "[" * 100_000 + "]" * 100_000,
        lambda t: t.replace(
            '"source": {', '"source": ' + '{"a":' * 50_000 + "1" + "}" * 50_000 + ', "b": {'
        ),
    ],
    ids=["infinity", "nan", "5000_digits", "deep_list", "deep_object"],
)
def test_hostile_model_json_is_a_bundle_error(onnx_default, edit, capsys):
    path = onnx_default / "model.json"
    text = edit(path.read_text())
    assert text != path.read_text()
    path.write_text(text)
    with pytest.raises(BundleError):
        load_bundle(onnx_default)
    assert main(["verify", str(onnx_default)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fer-edge verify: error:") and len(err.splitlines()) == 1


def test_unreadable_bundle_and_dataset_files_are_typed_errors(
    onnx_default, small_fer_dir, tmp_path
):
    """Permission denied: the files made unreadable, read by a child process that (when this is
    root) has lost root's power to read them anyway."""
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"perm-{os.getpid()}"
    work.mkdir(mode=0o755)
    try:
        bundle = _copy(onnx_default, work / "bundle")
        data = _copy(small_fer_dir / "test", work / "data")
        label_list = work / "list.csv"
        label_list.write_text("path,label\nx.jpg,happy\n")
        for p in (bundle / "model.onnx", data / "happy", label_list):
            os.chmod(p, 0)
        code = f"""
from fer_edge.bundle import load_bundle
from fer_edge.data import load_dataset
from fer_edge.errors import FerEdgeError
for call in (lambda: load_bundle({str(bundle)!r}), lambda: load_dataset({str(data)!r}),
             lambda: load_dataset({str(label_list)!r})):
    try:
        call()
        print("ok")
    except FerEdgeError as e:
        print(type(e).__name__, "permission denied" in str(e).lower())
"""
        # Root reads anything through CAP_DAC_OVERRIDE: drop it (and DAC_READ_SEARCH) from the
        # child's bounding set instead of switching user, since another user may not even
        # reach the interpreter (a venv's python links into root's home).
        drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
        prefix = drop if os.geteuid() == 0 else []
        proc = subprocess.run(
            [*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
            env={**os.environ, "FER_EDGE_CACHE": str(work / "cache")},
        )  # fmt: skip
        assert proc.stdout.split("\n")[:3] == [
            "BundleError True",
            "DatasetError True",
            "DatasetError True",
        ], proc.stderr[-1500:]
    finally:
        for p in work.rglob("*"):
            os.chmod(p, 0o755)
        shutil.rmtree(work)


# ------------------------------------------------------------------ typed errors: graphs


def _onnx(path: Path, out_shape, in_shape=("n", 1, 48, 48), tail=(), bias=None) -> Path:
    """The tiny linear classifier with extra nodes after it (``tail``) and the given declared
    shapes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = weights()
    if bias is not None:
        b = bias
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logits" if not tail else "z"], transB=1),
        *tail,
    ]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b.astype(np.float32), "B")]
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), "flat_shape"))
    inits.append(numpy_helper.from_array(np.array([0, 7, 1, 1], np.int64), "conv_shape"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(out_shape))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _bundle_of(tmp_path: Path, graph: Path) -> Path:
    return wrap_onnx(tmp_path / "b", graph)


def test_an_onnx_graph_with_a_rank_1_output_is_refused_at_load(tmp_path):
    pytest.importorskip("onnx")
    from onnx import helper

    tail = [helper.make_node("Reshape", ["z", "flat_shape"], ["logits"])]
    root = _bundle_of(tmp_path, _onnx(tmp_path / "g.onnx", ["m"], tail=tail))
    with pytest.raises(RuntimeBackendError, match="output shape"):
        Recognizer(root, backend="onnxruntime", detector=None)


def test_a_fully_convolutional_onnx_graph_is_refused_at_load(tmp_path):
    pytest.importorskip("onnx")
    from onnx import helper

    # (N, 7) -> (N, 7, 1, 1) -> tiled to (N, 7, h, w): a score map, not a row of scores
    tail = [
        helper.make_node("Reshape", ["z", "conv_shape"], ["z4"]),
        helper.make_node("Tile", ["z4", "reps"], ["logits"]),
    ]
    from onnx import numpy_helper

    graph = _onnx(tmp_path / "g.onnx", ["n", 7, "h", "w"], tail=tail)
    import onnx

    model = onnx.load(str(graph))
    model.graph.initializer.append(
        numpy_helper.from_array(np.array([1, 1, 6, 6], np.int64), "reps")
    )
    onnx.save(model, str(graph))
    root = _bundle_of(tmp_path, graph)
    with pytest.raises(RuntimeBackendError, match="output shape"):
        Recognizer(root, backend="onnxruntime", detector=None)


def test_an_onnx_graph_with_a_fixed_batch_of_1_classifies_many_faces(tmp_path, fer2013_root):
    pytest.importorskip("onnx")
    root = _bundle_of(tmp_path, _onnx(tmp_path / "g.onnx", [1, 7], in_shape=(1, 1, 48, 48)))
    rec = Recognizer(root, backend="onnxruntime", detector=None)
    faces = [cv2.imread(str(p), 0) for p in sorted((fer2013_root / "test" / "fear").iterdir())[:5]]
    out = rec.classify(faces)
    expected = reference(preprocess(faces, PreprocessSpec()), *weights())
    assert [f.label for f in out] == [FER_LABELS[i] for i in expected.argmax(1)]


def test_a_graph_emitting_inf_is_a_typed_error_and_json_stays_valid(tmp_path, fer2013_root, capsys):
    pytest.importorskip("onnx")
    bias = np.zeros(7, np.float32)
    bias[3] = np.inf
    root = _bundle_of(tmp_path, _onnx(tmp_path / "g.onnx", ["n", 7], bias=bias))
    face = next((fer2013_root / "test" / "happy").iterdir())
    with pytest.raises(RuntimeBackendError, match="non-finite"):
        Recognizer(root, backend="onnxruntime", detector=None).classify([cv2.imread(str(face))])
    capsys.readouterr()
    assert main(["predict", str(face), "--no-detect", "--json", "--model", str(root)]) == 2
    out, err = capsys.readouterr()
    assert "NaN" not in out and "non-finite" in err
    for line in out.splitlines():
        json.loads(line)


def test_onnx_runtime_banners_stay_off_stdout(tmp_path, media_root, capfd):
    """A graph whose tensor names are not UTF-8 (hashes rewritten to match): ONNX Runtime
    prints an "EP Error" banner before retrying; the error must be typed and stdout, which
    carries --json results, empty even at the file-descriptor level."""
    data = make_bundle(tmp_path / "m", "onnx").graph.read_bytes()
    assert b"input" in data
    graph = tmp_path / "g.onnx"
    graph.write_bytes(data.replace(b"input", b"inp\xe9t"))
    root = _bundle_of(tmp_path, graph)
    capfd.readouterr()
    argv = ["predict", str(media_root / "portrait.jpg"), "--model", str(root), "--json"]
    assert main([*argv, "--backend", "onnxruntime"]) == 2
    out, err = capfd.readouterr()
    assert out == "" and "fer-edge predict: error:" in err


# ------------------------------------------------------------------------ typed errors: CSV


def test_label_list_edge_cases(fer2013_root, tmp_path):
    """A NUL byte in a path, labels that only look like numbers ('³', 5000 digits), a swapped
    header with a short row: counted or skipped, never a traceback. Excel's UTF-8 BOM: read."""
    faces = sorted((fer2013_root / "test" / "happy").iterdir())[:2]
    rows = [
        f"{faces[0]},happy",
        f"{faces[1]},3",  # index 3 = happy
        "bad\x00name.jpg,happy",
        f"{faces[0]},\u00b3",
        f"{faces[0]}," + "9" * 5000,
        f"{faces[0]}",  # a short row
    ]
    path = tmp_path / "list.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ("path,label\n" + "\n".join(rows) + "\n").encode())
    ds = load_dataset(path, cache=False)
    assert len(ds) == 2 and ds.class_counts()["happy"] == 2
    assert ds.n_unreadable == 1  # the NUL path
    assert set(ds.skipped_classes) == {"\u00b3", "9" * 5000, ""}
    swapped = tmp_path / "swapped.csv"
    swapped.write_text(f"label,path\nhappy,{faces[0]}\nsad\n")
    assert len(load_dataset(swapped, cache=False)) == 1


@FUZZ
@given(
    label=st.sampled_from(["\u00b3", "-\u00b2", "\u0663", "9" * 5000, "-" + "1" * 30, "\x00"])
    | st.text(max_size=12)
    | st.from_regex(r"-?[0-9\u00b2\u00b3\u0660-\u0669]{1,40}", fullmatch=True)
)
def test_any_label_cell_is_a_class_a_skip_or_a_dataset_error(tmp_path_factory, fer2013_root, label):
    face = next((fer2013_root / "test" / "sad").iterdir())
    path = tmp_path_factory.mktemp("lbl") / "list.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        import csv

        csv.writer(f).writerows([["path", "label"], [str(face), label], [str(face), "sad"]])
    try:
        ds = load_dataset(path, cache=False)
    except DatasetError:
        return
    assert 1 <= len(ds) <= 2


def test_kaggle_csv_edge_cases(tmp_path):
    face = " ".join(["128"] * 48 * 48)
    rows = [
        f"3,{face},Training",
        "0," + " ".join(["1"] * 2303 + ["100000000000000000000000"]) + ",Training",  # 10^23
        "\u00b3," + face + ",Training",
        "9" * 5000 + "," + face + ",Training",
    ]
    path = tmp_path / "fer2013.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ("emotion,pixels,Usage\n" + "\n".join(rows) + "\n").encode())
    ds = load_dataset(path)
    assert len(ds) == 1 and ds.n_unreadable == 3
    swapped = tmp_path / "swapped.csv"
    swapped.write_text(f"pixels,emotion,Usage\n{face},3,Training\n{face}\n")
    ds = load_dataset(swapped)
    assert len(ds) == 1 and ds.n_unreadable == 1


# ----------------------------------------------------------------- typed errors: arguments


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_faces": None},
        {"max_faces": "3"},
        {"max_faces": 2.5},
        {"smoothing": "x"},
        {"smoothing": None},
        {"smoothing": 1.5},
        {"model": None},
        {"model": 123},
        {"backend": None},
    ],
)
def test_recognizer_arguments_of_the_wrong_type_are_input_errors(tiny, kwargs):
    kwargs = {"model": tiny, "detector": None, **kwargs}
    with pytest.raises(InputError):
        Recognizer(**kwargs)


@pytest.mark.parametrize("shape", [(48, 48, 5), (3, 48, 48), (2, 48, 48), (48, 48, 2)])
def test_one_ambiguous_crop_is_refused_not_split_into_many(tiny, shape):
    rec = Recognizer(tiny, backend="onnxruntime", detector=None)
    with pytest.raises(InputError, match="ambiguous"):
        rec.classify(np.zeros(shape, np.uint8))
    with pytest.raises(InputError, match="ambiguous"):
        preprocess(np.zeros(shape, np.uint8), PreprocessSpec())


def test_predict_on_a_fifo_named_mp4_ends_at_once(tmp_path):
    """OpenCV's open of a FIFO blocks in C forever, deaf to Ctrl-C."""
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "fer_edge", "predict", str(fifo)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "not a regular file" in proc.stderr
    assert time.monotonic() - t0 < 60

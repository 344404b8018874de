"""Hostile input: frames, face crops, model bundles, dataset files and command lines that a
camera, a file system or a user can produce. Each must end in a typed fer-edge error with a
clear message (or a normal result), never a crash, a hang or partial output."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sdk_helpers import make_bundle

from fer_edge import FaceResult, Recognizer
from fer_edge.bundle import load_bundle, seal, sha256_file
from fer_edge.cli import main
from fer_edge.data import MAX_IMAGE_PIXELS, load_dataset, read_image
from fer_edge.errors import BundleError, DatasetError, FerEdgeError, InputError

HAS_TORCH = importlib.util.find_spec("torch") is not None

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard")
    return {fmt: make_bundle(root, fmt) for fmt in ("onnx", "tflite")}


@pytest.fixture(scope="module")
def rec(bundles):
    return Recognizer(bundles["onnx"], backend="onnxruntime", num_threads=1)


def _check_results(out: object) -> None:
    assert isinstance(out, list) and all(isinstance(f, FaceResult) for f in out)
    for f in out:
        assert np.isfinite(f.probs).all() and abs(float(f.probs.sum()) - 1) < 1e-4


# ------------------------------------------------------------------------------ frames

_dtypes = st.one_of(
    hnp.scalar_dtypes(),  # bool, ints, uints, floats, complex, datetime64, timedelta64
    hnp.byte_string_dtypes(),
    hnp.unicode_string_dtypes(),
    st.just(np.dtype(object)),
    st.just(np.dtype([("a", "u1"), ("b", "f4")])),
)


@st.composite
def hostile_arrays(draw):
    """Arrays of any dtype and rank, some non-contiguous, read-only or holding NaN/inf."""
    dtype = draw(_dtypes)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=12))
    if draw(st.booleans()) and len(shape) in (2, 3):  # a frame-like shape: more likely to pass
        shape = (draw(st.integers(1, 120)), draw(st.integers(1, 120)), *shape[2:])
    elements = st.integers(-5, 300) if dtype.kind == "O" else None
    arr = draw(hnp.arrays(dtype, shape, elements=elements))
    if arr.dtype.kind == "f" and arr.size and draw(st.booleans()):
        arr.flat[draw(st.integers(0, arr.size - 1))] = draw(st.sampled_from([np.nan, np.inf]))
    view = draw(st.sampled_from(["plain", "strided", "reversed", "readonly"]))
    if view == "strided" and arr.ndim >= 2:
        arr = arr[::2, ::3]
    elif view == "reversed" and arr.ndim >= 1:
        arr = arr[::-1]
    elif view == "readonly":
        arr.flags.writeable = False
    return arr


@FUZZ
@given(hostile_arrays())
def test_fuzzed_frames_and_crops_give_results_or_input_error(rec, arr):
    for call in (rec, rec.classify, lambda a: rec.classify([a, a])):
        try:
            out = call(arr)
        except InputError as e:
            assert str(e)  # a message that says what is wrong
            continue
        _check_results(out)


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((4320, 7680, 3), np.uint8),  # 8K
        np.zeros((1, 1), np.uint8),
        np.zeros((16384, 2, 3), np.uint8),  # the largest side allowed
        np.full((64, 64), 1e300, np.float64),  # beyond float32's range
        np.full((64, 64, 3), 65504, np.float16),
        np.full((64, 64), 2**40, np.int64)[:, :],
        np.broadcast_to(np.uint8(7), (300, 400, 3)),  # zero strides, read-only
        np.zeros((3, 200, 300), np.uint8).transpose(1, 2, 0),  # channels-first memory
    ],
    ids=["8k", "1x1", "16384", "f64_huge", "f16_max", "int64_big", "broadcast", "transposed"],
)
def test_extreme_frames(rec, frame):
    try:
        out = rec(frame)
    except InputError as e:
        assert "outside" in str(e) or "refused" in str(e)
        return
    _check_results(out)


@pytest.mark.parametrize(
    "faces", [np.uint8(3), np.zeros(()), 5, object(), [None], ["x.jpg"], [np.zeros((0, 5))], b"x"]
)
def test_classify_refuses_what_is_not_a_list_of_crops(rec, faces):
    with pytest.raises(InputError):
        rec.classify(faces)


# ----------------------------------------------------------------------------- bundles


def _copy(bundle, dest: Path) -> Path:
    shutil.copytree(bundle.root, dest)
    return dest


def _rewrite_meta(root: Path, edit) -> None:
    """Edit model.json and recompute its manifest hash (a bundle written this way)."""
    meta = json.loads((root / "model.json").read_text())
    edit(meta)
    (root / "model.json").write_text(json.dumps(seal(meta)))


def _damage(data: bytes, kind: str, rnd: np.random.Generator) -> bytes:
    if kind == "zero":
        return b""
    if kind == "truncated":
        return data[: int(rnd.integers(0, len(data)))]
    if kind == "junk":
        return rnd.bytes(int(rnd.integers(1, 4096)))
    arr = bytearray(data)
    for _ in range(1 if kind == "bitflip" else 64):
        pos = int(rnd.integers(0, len(arr)))
        arr[pos] ^= 1 << int(rnd.integers(0, 8))
    return bytes(arr)


DAMAGE = ["zero", "truncated", "junk", "bitflip", "bitflips"]


@pytest.mark.parametrize(("fmt", "backend"), [("onnx", "onnxruntime"), ("tflite", "tflite")])
def test_damaged_graph_files_are_refused(bundles, tmp_path, fmt, backend):
    """With the hashes left alone, any change is caught by the sha256 check; with the hashes
    rewritten to match (a bundle damaged before it was written), the runtime must refuse the
    graph with a typed error or run it."""
    src = bundles[fmt]
    data = src.graph.read_bytes()
    rnd = np.random.default_rng(1)
    for i, kind in enumerate(DAMAGE * 2):
        root = _copy(src, tmp_path / f"{kind}{i}")
        graph = root / src.graph.name
        graph.write_bytes(_damage(data, kind, rnd))
        with pytest.raises(BundleError, match="sha256"):
            load_bundle(root)
        _rewrite_meta(root, lambda m, g=graph: m["files"].update({g.name: sha256_file(g)}))
        try:
            rec = Recognizer(root, backend=backend, detector=None)
            out = rec(np.full((48, 48), 128, np.uint8))
        except FerEdgeError as e:
            assert str(e)
            continue
        assert len(out) == 1 and out[0].probs.shape == (7,)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(meta: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for k, v in meta.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out += _paths(v, (*prefix, k))
    return out


@FUZZ
@given(data=st.data())
def test_fuzzed_model_json_gives_bundle_errors(bundles, tmp_path_factory, data):
    src = bundles["onnx"]
    root = _copy(src, tmp_path_factory.mktemp("meta") / "b")
    meta = json.loads((root / "model.json").read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        if not _paths(meta):
            break
        path = data.draw(st.sampled_from(_paths(meta)))
        node = meta
        for k in path[:-1]:
            node = node[k]
        if not isinstance(node, dict):
            continue
        if data.draw(st.booleans()):
            node.pop(path[-1], None)
        else:
            node[path[-1]] = data.draw(_json)
    with contextlib.suppress(BundleError):  # NaN has no canonical form: left unsealed
        meta = seal(meta)  # a writer's mistakes, past the manifest check
    (root / "model.json").write_text(json.dumps(meta))
    try:
        rec = Recognizer(root, backend="onnxruntime", detector=None)
        out = rec(np.full((48, 48), 100, np.uint8))
    except FerEdgeError as e:
        assert str(e)
        return
    _check_results(out)
    assert isinstance(rec.bundle.name, str)


@pytest.mark.parametrize(
    "text", ["", "[]", "null", "{", '"x"', "NaN", "\x00", "{}" * 10, " " * (1 << 20 | 1)]
)
def test_model_json_that_is_not_an_object(bundles, tmp_path, text):
    root = _copy(bundles["onnx"], tmp_path / "b")
    (root / "model.json").write_text(text)
    with pytest.raises(BundleError):
        load_bundle(root)


@pytest.mark.parametrize(("fmt", "backend"), [("onnx", "onnxruntime"), ("tflite", "tflite")])
@pytest.mark.parametrize("n_labels", [2, 6, 8])
def test_labels_that_do_not_match_the_graph(bundles, tmp_path, fmt, backend, n_labels):
    root = _copy(bundles[fmt], tmp_path / "b")
    _rewrite_meta(root, lambda m: m.update(labels=[f"c{i}" for i in range(n_labels)]))
    with pytest.raises(BundleError, match="labels"):
        Recognizer(root, backend=backend)


def test_preprocess_that_does_not_match_the_graph(bundles, tmp_path):
    root = _copy(bundles["onnx"], tmp_path / "b")
    _rewrite_meta(root, lambda m: m["preprocess"].update(channels=3, mean=[0.5], std=[0.5]))
    with pytest.raises(FerEdgeError, match="input shape"):
        Recognizer(root, backend="onnxruntime")


# ------------------------------------------------------------------------ dataset files


def png_header(width: int, height: int, rows: int = 16) -> bytes:
    """A valid PNG start declaring ``width`` x ``height`` gray pixels, with only a few rows of
    data: the shape of a decompression bomb, without the bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (min(width, 4096) + 1) * rows, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(100_000, 100_000), (20_000, 20_000), (9000, 9000), (1, 70_000)])
def test_decompression_bombs_are_refused_before_decoding(tmp_path, monkeypatch, size):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(*size))
    assert size[0] * size[1] > MAX_IMAGE_PIXELS or max(size) > 16384
    decoded = []
    monkeypatch.setattr("fer_edge.data.cv2.imdecode", lambda *a: decoded.append(1))
    assert read_image(path) is None
    assert not decoded, "the bomb reached the decoder"
    assert read_image(tmp_path) is None  # a folder is not an image either


def test_bad_image_files_are_skipped_and_counted(fer2013_root, tmp_path):
    good = sorted((fer2013_root / "train" / "happy").iterdir())[:3]
    data = good[0].read_bytes()
    happy, sad = tmp_path / "happy", tmp_path / "sad"
    happy.mkdir()
    sad.mkdir()
    for f in good:
        shutil.copy(f, happy / f.name)
    (sad / "zero.jpg").write_bytes(b"")
    (sad / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (sad / "junk.png").write_bytes(os.urandom(500))
    (sad / "text.jpg").write_text("not an image")
    (sad / "bomb.png").write_bytes(png_header(30_000, 30_000))
    (sad / "dir.jpg").mkdir()
    os.mkfifo(sad / "fifo.jpg")  # would block a reader forever
    (tmp_path / "robots").mkdir()  # a class the model does not know
    shutil.copy(good[0], tmp_path / "robots" / "r.jpg")
    ds = load_dataset(tmp_path, cache=False)
    assert len(ds) == 3 and ds.class_counts()["happy"] == 3
    assert ds.n_unreadable == 5 and ds.skipped_classes == {"robots": 1}
    # a label list that names the FIFO, a missing file and a file outside its folder
    (tmp_path / "list.csv").write_text(
        "path,label\nsad/fifo.jpg,sad\nmissing.jpg,happy\n/dev/zero,happy\n"
        f"{good[0]},happy\nx.jpg,robot\n"
    )
    ds = load_dataset(tmp_path / "list.csv", cache=False)
    assert len(ds) == 1 and ds.n_unreadable == 3 and ds.skipped_classes == {"robot": 1}


def test_hostile_kaggle_csv_rows(tmp_path):
    face = " ".join(["128"] * 48 * 48)
    rows = [
        f"3,{face},Training",  # the one good row
        "0,1 2 3,Training",  # not a square
        "0,,Training",  # no pixels
        f"7,{face},Training",  # emotion code out of range
        f"-1,{face},Training",  # negative codes must not wrap around to the last class
        f"x,{face},Training",
        "0,1 2 3 999,Training",  # values over 255
        "0,1 2 nan 4,Training",
        "0",  # a short row
        ",,,,,,",
    ]
    path = tmp_path / "fer2013.csv"
    path.write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
    ds = load_dataset(path)
    assert len(ds) == 1 and ds.label_names[ds.labels[0]] == "happy"
    assert ds.n_unreadable == len(rows) - 1
    with pytest.raises(DatasetError, match="no usable rows"):
        load_dataset(path, "test")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        np.random.default_rng(0).bytes(400),
        b"\xff\xfe" + "path,label\n".encode("utf-16-le"),
        b"a,b\n1,2\n",
        b"emotion,pixels\n0," + b"1 " * 100_000 + b"\n",
        b"path,label\n\x00\x00,\x00\n",
    ],
    ids=["empty", "binary", "utf16", "wrong_columns", "huge_field", "nul"],
)
def test_csv_files_that_are_not_datasets(tmp_path, content):
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    with pytest.raises(DatasetError):
        load_dataset(path, cache=False)


# ------------------------------------------------------------------------- command line


def _cli(argv, capsys) -> str:
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse: wrong types and missing arguments
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "{tmp}/missing.jpg", "--model", "{bundle}"], "does not exist"),
        (["predict", "{media}/portrait.jpg", "--model", "{file}"], "not a model bundle"),
        (["predict", "{media}/portrait.jpg", "--model", "{bundle}", "--threads", "0"], "--threads"),
        (
            ["predict", "{media}/portrait.jpg", "--model", "{bundle}", "--threads", "two"],
            "invalid int",
        ),
        (
            [
                "predict",
                "{media}/portrait.jpg",
                "--model",
                "{bundle}",
                "--annotate",
                "{file}/x.png",
            ],
            "{file}",
        ),
        (
            [
                "predict",
                "{media}/portrait.jpg",
                "--model",
                "{bundle}",
                "--annotate",
                "/proc/fer/x.png",
            ],
            "/proc/fer",
        ),
        (["eval", "--model", "{bundle}", "--data", "{tmp}/missing"], "does not exist"),
        (["eval", "--model", "{bundle}", "--data", "{junk_csv}"], "not a readable UTF-8 CSV"),
        (["eval", "--model", "{tmp}/missing.pt", "--data", "{tmp}"], "does not exist"),
        (["eval", "--model", "{bundle}", "--data", "{tmp}", "--batch-size", "0"], "batch_size"),
        (["verify", "{tmp}/missing"], "does not exist"),
        (["verify", "{file}"], "not a model bundle"),
        (["train", "--data", "{tmp}/missing", "--out", "{tmp}/run"], "does not exist"),
        (["train", "--data", "{junk_csv}", "--out", "{tmp}/run"], "not a readable UTF-8 CSV"),
        (["train", "--data", "{tmp}", "--out", "{file}/run"], "cannot write to the run folder"),
        (["train", "--data", "{tmp}", "--out", "/proc/fer-run"], "cannot write to the run folder"),
        (["train", "--data", "{tmp}", "--out", "{tmp}/run", "--epochs", "0"], "--epochs"),
        (["train", "--data", "{tmp}", "--epochs", "many"], "invalid int"),
        (
            [
                "export",
                "--model",
                "{tmp}/missing.pt",
                "--target",
                "onnx",
                "--out",
                "{tmp}/e",
                "--data",
                "{tmp}",
            ],
            "does not exist",
        ),
        (
            [
                "export",
                "--model",
                "{file}",
                "--target",
                "onnx",
                "--out",
                "{tmp}/e",
                "--data",
                "{tmp}",
            ],
            "cannot be loaded safely",
        ),
        (
            [
                "export",
                "--model",
                "{bundle}",
                "--target",
                "jpeg",
                "--out",
                "{tmp}/e",
                "--data",
                "{tmp}",
            ],
            "invalid choice",
        ),
    ],
)
def test_cli_user_errors_exit_2_with_one_line(bundles, media_root, tmp_path, capsys, argv, message):
    junk = tmp_path / "junk.csv"
    junk.write_bytes(b"\x92\xff" + os.urandom(64))
    (tmp_path / "afile").write_text("not a folder")
    names = dict(
        tmp=tmp_path,
        media=media_root,
        bundle=bundles["onnx"].root,
        file=tmp_path / "afile",
        junk_csv=junk,
    )
    line = _cli([a.format(**names) for a in argv], capsys)
    cmd = argv[0]
    assert line.startswith(f"fer-edge {cmd}: error:"), line
    if not HAS_TORCH and (cmd in ("train", "export") or any(a.endswith(".pt") for a in argv)):
        message = "[train]"  # an SDK-only install (e.g. a Pi's): the extra to install, said first
    assert message.format(**names) in line
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    assert not (tmp_path / "e").exists()
    leftovers = [p for p in tmp_path.rglob(".*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


def test_cli_bad_input_image_is_a_clean_error(bundles, tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(40_000, 40_000))
    line = _cli(["predict", str(bomb), "--model", str(bundles["onnx"].root)], capsys)
    assert "40000x40000 px is over the size limit" in line  # the real reason, before decoding


def test_frames_from_a_real_photo_survive_conversion(rec, media_root):
    """The fuzzers above mostly see noise; a real face must still come through every frame
    representation the same way."""
    img = cv2.imread(str(media_root / "portrait.jpg"))
    (face,) = rec(img)
    for variant in (img[::-1, ::-1][::-1, ::-1], np.asfortranarray(img), img.astype(np.float64)):
        (other,) = rec(variant)
        np.testing.assert_allclose(other.box, face.box, atol=2)

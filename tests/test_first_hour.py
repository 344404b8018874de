"""A new user's first hour (issue 16): the Python API finds the faces the CLI finds, the base
install runs BlazeFace, and the rough edges seen on the way (bad inputs, output formats, help
texts, reprs) behave."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_edge import Recognizer, formats, load_bundle
from fer_edge.cli import COMMANDS, main
from fer_edge.detect import load_detector
from fer_edge.errors import DatasetError

REPO = Path(__file__).resolve().parents[1]


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _predict_json(capsys, *argv) -> list[dict]:
    assert main(["predict", *map(str, argv), "--json"]) == 0
    return _json_lines(capsys.readouterr().out)


# ---------------------------------------------------------------- 1. API and CLI agree


@pytest.mark.parametrize("photo", ["group_selfie.jpg", "portrait.jpg", "no-faces.jpg"])
def test_recognizer_defaults_find_the_faces_predict_finds(photo, media_root, capsys):
    (record,) = _predict_json(capsys, media_root / photo)
    faces = Recognizer()(cv2.imread(str(media_root / photo)))
    assert len(faces) == len(record["faces"])
    got = np.array(sorted(f.box for f in faces)).reshape(-1, 4)
    want = np.array(sorted(tuple(f["box"]) for f in record["faces"])).reshape(-1, 4)
    assert np.abs(got - want).max(initial=0) <= 0.1  # JSON rounds to 0.1 px


def test_auto_detector_is_the_photo_one_for_frames_and_the_fast_one_for_streams(media_root):
    rec = Recognizer()
    assert rec.detector.name == "blazeface_full" and rec.detector.tiles == 2
    # group_selfie: six people (by eye); the fast short-range model alone misses most of them
    img = cv2.imread(str(media_root / "group_selfie.jpg"))
    assert len(rec(img)) == 6 > len(Recognizer(detector="blazeface")(img))
    with rec.stream_session() as session:
        assert session.detector.name == "blazeface_short"
    assert Recognizer(detector="photo").detector.tiles == 2


# ---------------------------------------------------------------- 2. the base install


@pytest.fixture
def onnxruntime_only(monkeypatch):
    """An install with the base dependencies only: no LiteRT, no OpenVINO."""
    real = formats.backend_installed
    monkeypatch.setattr(
        formats, "backend_installed", lambda name: name == "onnxruntime" and real(name)
    )


def test_base_install_runs_blazeface_and_the_default_model(onnxruntime_only, media_root):
    rec = Recognizer()
    assert rec.runtime.name == "onnxruntime" and rec.bundle.name == "default"
    faces = rec(cv2.imread(str(media_root / "portrait.jpg")))
    assert len(faces) == 1 and type(rec.detector.graph).__name__ == "OnnxGraph"
    with rec.stream_session() as session:
        assert session.detector.name == "blazeface_short"
        assert type(session.detector.graph).__name__ == "OnnxGraph"


def test_onnx_blazeface_gives_the_tflite_boxes(media_root):
    cap = cv2.VideoCapture(str(media_root / "talking_short.mp4"))
    frames = [cap.read()[1] for _ in range(10)]
    cap.release()
    for name in ("blazeface", "blazeface_full"):
        onnx = load_detector(name, 1, backend="onnxruntime")
        ref = load_detector(name, 1, backend="tflite")
        for frame in frames:
            a, b = onnx(frame), ref(frame)
            assert len(a) == len(b) >= 1
            assert np.abs(np.array(a[0].box) - np.array(b[0].box)).max() < 1.0
            assert abs(a[0].score - b[0].score) < 1e-3


# ---------------------------------------------------------------- 4. sample photos


def test_sample_photos_are_the_public_domain_portraits_and_predict_says_where(tmp_path, capsys):
    media = REPO / "examples" / "media"
    assert sorted(p.name for p in media.iterdir() if p.suffix != ".md") == [
        "astronaut.png",
        "grace_hopper.jpg",
    ]
    out = tmp_path / "annotated"
    assert main(["predict", str(media), "--annotate", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"annotated output written to {out}" in err
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.png", "grace_hopper.png"]
    assert "examples/media --annotate" in (REPO / "run.sh").read_text()


# ---------------------------------------------------------------- 6. everything else


def test_eval_on_unlabelled_photos_is_a_typed_error(media_root, tmp_path, capsys):
    for name in ("portrait.jpg", "no-faces.jpg"):
        (tmp_path / name).write_bytes((media_root / name).read_bytes())
    assert main(["eval", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no labels" in err and "Traceback" not in err


def test_pipeline_checks_the_data_layout_before_any_stage(small_fer_dir, tmp_path, capsys):
    recipe = REPO / "recipes" / "ci.yaml"
    argv = ["pipeline", "--config", str(recipe), "--out", str(tmp_path / "p")]
    assert main([*argv, "--data", str(small_fer_dir / "train")]) == 2  # class folders only
    assert "has no train, val, test folder" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()  # nothing ran


def test_pipeline_help_names_no_missing_path(capsys):
    with pytest.raises(SystemExit):
        main(["pipeline", "--help"])
    assert "tests/small" not in capsys.readouterr().out


def test_help_texts_have_no_rest_markup_or_default_none(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = capsys.readouterr().out
        assert text, name
        for noise in ("(default: None)", "``", ":class:", ":func:", ":data:"):
            assert noise not in text, (name, noise)


def test_annotated_video_is_browser_playable_with_normal_permissions(media_root, tmp_path):
    mask = os.umask(0o022)
    try:
        for name in ("clip.webm", "clip.mp4"):
            out = tmp_path / name
            argv = ["predict", str(media_root / "talking_short.mp4"), "--annotate", str(out)]
            assert main(argv) == 0
            assert out.stat().st_mode & 0o777 == 0o644  # like the annotated images
            cap = cv2.VideoCapture(str(out))
            fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode().lower()
            frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            cap.release()
            assert frames > 100
            if name.endswith(".webm"):
                assert fourcc == "vp80"
    finally:
        os.umask(mask)


def test_sixteen_bit_images_are_read_and_oversize_ones_name_the_limit(media_root, tmp_path, capsys):
    img16 = cv2.imread(str(media_root / "portrait.jpg")).astype(np.uint16) * 257
    for name in ("portrait16.png", "portrait16.tiff"):
        assert cv2.imwrite(str(tmp_path / name), img16)
        (record,) = _predict_json(capsys, tmp_path / name)
        assert len(record["faces"]) == 1
    wide = tmp_path / "wide.png"
    assert cv2.imwrite(str(wide), np.zeros((8, 17000), np.uint8))
    assert main(["predict", str(wide)]) == 2
    err = capsys.readouterr().err
    assert "17000x8 px is over the size limit" in err and "cannot decode" not in err


def test_a_bare_graph_is_wrapped_into_a_bundle_and_predict_suggests_it(
    media_root, tmp_path, capsys
):
    graph = Path(load_bundle(REPO / "fer_edge" / "models" / "default").graph)
    photo = media_root / "portrait.jpg"
    assert main(["predict", str(photo), "--model", str(graph)]) == 2
    assert "fer-edge wrap" in capsys.readouterr().err
    labels = "angry,disgust,fear,happy,neutral,sad,surprise"
    assert main(["wrap", str(graph), "--labels", labels, "--out", str(tmp_path / "b")]) == 0
    (mine,) = _predict_json(capsys, photo, "--model", tmp_path / "b", "--backend", "onnxruntime")
    (ref,) = _predict_json(capsys, photo, "--model", "default", "--backend", "onnxruntime")

    def without_scores(faces):
        return [{k: v for k, v in f.items() if k not in ("score", "scores")} for f in faces]

    assert without_scores(mine["faces"]) == without_scores(ref["faces"]) and mine["faces"]
    # the same graph; the wrapped bundle has no fitted temperature, the shipped one has T
    t = load_bundle(REPO / "fer_edge" / "models" / "default").temperature
    for m, r in zip(mine["faces"], ref["faces"], strict=True):
        want = np.array(list(r["scores"].values())) ** t
        np.testing.assert_allclose(list(m["scores"].values()), want / want.sum(), atol=2e-3)


def test_shipped_bundles_are_accepted_by_name(media_root, capsys):
    for name in ("default_tflite", "default_openvino"):
        (record,) = _predict_json(capsys, media_root / "portrait.jpg", "--model", name)
        assert len(record["faces"]) == 1
    assert main(["predict", str(media_root / "portrait.jpg"), "--model", "default_nope"]) == 2
    assert "shipped: default, default_openvino" in capsys.readouterr().err


def test_predict_takes_several_paths_reads_videos_in_folders_and_writes_csv(
    media_root, tmp_path, capsys
):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("portrait.jpg", "talking_short.mp4"):
        (folder / name).write_bytes((media_root / name).read_bytes())
    table = tmp_path / "faces.csv"
    records = _predict_json(capsys, folder, media_root / "group_selfie.jpg", "--csv", table)
    video = [r for r in records if r["source"].endswith(".mp4")]
    assert len(video) == 115  # every frame of the video in the folder
    assert [r["frame"] for r in video] == list(range(115))
    fps = cv2.VideoCapture(str(media_root / "talking_short.mp4")).get(cv2.CAP_PROP_FPS)
    assert video[-1]["time"] == pytest.approx(114 / fps, abs=1e-3)
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == sum(max(1, len(r["faces"])) for r in records)
    group = [r for r in rows if r["source"].endswith("group_selfie.jpg")]
    assert len(group) == 6
    assert {"x1", "label", "score", "happy", "time_s"} <= rows[0].keys()
    labels = list(rows[0])[10:]  # source, frame, time_s, face, box, label, score, then labels
    assert len(labels) == 7 and group[0]["label"] in labels
    assert float(group[0]["score"]) == max(float(group[0][k]) for k in labels)


def test_no_xnnpack_info_line_on_stderr(media_root):
    done = subprocess.run(
        [sys.executable, "-m", "fer_edge", "predict", str(media_root / "portrait.jpg")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "XNNPACK" not in done.stderr and "INFO:" not in done.stderr
    assert "face 1" in done.stdout


def test_bundle_and_recognizer_reprs_are_one_readable_line():
    rec = Recognizer(backend="onnxruntime")
    for text in (repr(rec.bundle), repr(rec)):
        assert "\n" not in text and len(text) < 300 and "sha256" not in text
    assert "backend='onnxruntime'" in repr(rec) and "detector='auto'" in repr(rec)
    assert "format='onnx'" in repr(rec.bundle)


def test_bench_outside_the_repository_uses_the_shipped_frame(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FER_EDGE_DATA", raising=False)
    assert main(["bench", "--frames", "5", "--warmup", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["faces_per_frame"] >= 1 and r["end_to_end"]["fps"] > 0


def test_progress_bar_stays_with_the_summary(monkeypatch):
    pytest.importorskip("tqdm")
    from fer_edge.train.engine import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    bar = Progress(3, "epoch 1/1")
    for _ in range(3):
        bar.update(loss=0.5)
    bar.close("loss 0.5000")
    last = err.getvalue().replace("\r", "\n").rstrip("\n").splitlines()[-1]
    assert "epoch 1/1" in last and "3/3" in last and "loss 0.5000" in last


def test_parity_faces_shipped_are_faces_and_photos_of_things_are_not(media_root, tmp_path):
    from fer_edge.compress import parity
    from fer_edge.data import load_dataset

    shipped = load_dataset(parity.shipped_faces())
    assert len(shipped) == 280 and len(set(shipped.labels.tolist())) == 7
    assert parity.require_faces(shipped.images, "shipped") >= 0.8
    # A "dataset" of pictures that are not faces: tiles of the cartoon and of the video's
    # background, in class folders as a user might lay them out.
    cartoon = cv2.imread(str(media_root / "no-faces.jpg"))
    frame = cv2.VideoCapture(str(media_root / "talking_short.mp4")).read()[1][:, :200]
    for i, img in enumerate([cartoon, frame]):
        for j in range(4):
            d = tmp_path / ("happy" if j % 2 else "sad")
            d.mkdir(exist_ok=True)
            h, w = img.shape[:2]
            tile = img[(j // 2) * h // 2 : (j // 2 + 1) * h // 2, :]
            cv2.imwrite(str(d / f"{i}_{j}.png"), tile)
    things = load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="a face was found in only"):
        parity.require_faces(things.images, tmp_path)

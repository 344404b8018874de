"""examples/webcam.py as a user runs it: --serve in a real headless browser, the MJPEG stream and
the results endpoint, pacing of video files, photos without FPS, | head, a missing camera, and
the message on headless OpenCV."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_edge.errors import InputError
from fer_edge.serve import BOUNDARY, LiveView, parse_address

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "webcam.py"
PHOTO = REPO / "examples" / "media" / "grace_hopper.jpg"


def _webcam(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=120,
        **kw,
    )


class Served:
    """webcam.py --serve 127.0.0.1:0 in a subprocess; the URL read from its first line."""

    def __init__(self, *argv):
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--serve", "127.0.0.1:0", *map(str, argv)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stderr.readline()
        match = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        assert match, line + self.proc.stderr.read() if self.proc.poll() is not None else line
        self.url = match.group(1)
        self.started = time.monotonic()

    def get(self, path: str, timeout: float = 10) -> bytes:
        with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=timeout) as r:
            return r.read()

    def faces(self, timeout: float = 30) -> dict:
        """The latest results, once the first frame is through."""
        end = time.monotonic() + timeout
        while True:
            record = json.loads(self.get("/faces"))
            if record["frame"] is not None or time.monotonic() > end:
                return record
            time.sleep(0.1)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=15)


def _first_jpeg(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
        head = b""
        while b"\r\n\r\n" not in head:
            head += r.read(1)
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        return cv2.imdecode(np.frombuffer(r.read(length), np.uint8), cv2.IMREAD_COLOR)


def test_serve_page_shows_the_annotated_frame_in_headless_chromium(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    served = Served("--source", PHOTO)
    try:
        page = served.get("/").decode()
        assert '<img id="stream" src="/stream.mjpg"' in page
        faces = served.faces()
        assert len(faces["faces"]) == 1 and "fps" not in faces  # a photo has no frame rate
        shot = tmp_path / "serve.png"
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=800,900",
                "--timeout=3000",
                f"--screenshot={shot}",
                served.url,
            ],
            capture_output=True,
            timeout=90,
        )
        assert served.stop() == 0
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
    img = cv2.imread(str(shot))
    assert img is not None and img.std() > 20  # not a blank page
    # The photo is on the page as the browser drew it (the overlay aside): find it there.
    photo = cv2.imread(str(PHOTO))
    crop = photo[350:590, 20:500]  # below the face box and its bars: no overlay drawn there
    score = cv2.matchTemplate(img, crop, cv2.TM_CCOEFF_NORMED).max()
    assert score > 0.9, score


def test_stream_and_faces_endpoints_follow_a_video_at_its_own_rate(media_root):
    video = media_root / "talking_short.mp4"
    fps = cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FPS)
    served = Served("--source", video)
    try:
        frame = _first_jpeg(served.url + "stream.mjpg")
        assert frame.shape == (336, 596, 3)
        time.sleep(1.5)
        record = json.loads(served.get("/faces"))
        elapsed = time.monotonic() - served.started
        assert len(record["faces"]) == 1 and record["fps"] > 0
        # Shown videos play at the file's rate, not as fast as inference can go.
        assert record["frame"] <= fps * elapsed + 5
        assert served.stop() == 0
    finally:
        if served.proc.poll() is None:
            served.proc.kill()


def test_live_view_is_bounded_stoppable_and_local_by_default():
    assert parse_address("8000") == ("127.0.0.1", 8000)
    assert parse_address("0.0.0.0:9000") == ("0.0.0.0", 9000)
    for bad in ("", "host:", "x:99999", "eighty"):
        with pytest.raises(InputError, match="--serve takes PORT or HOST:PORT"):
            parse_address(bad)
    view = LiveView(port=0, max_clients=1)
    host, port = view.address
    assert host == "127.0.0.1"
    view.publish(cv2.imread(str(PHOTO)), {"frame": 0, "faces": []})
    first = urllib.request.urlopen(f"{view.url}stream.mjpg", timeout=10)
    with pytest.raises(urllib.error.HTTPError) as busy:
        urllib.request.urlopen(f"{view.url}stream.mjpg", timeout=10)
    assert busy.value.code == 503
    t = time.monotonic()
    view.close()
    assert time.monotonic() - t < 5
    first.close()
    LiveView("127.0.0.1", port).close()  # the port is free again
    with pytest.raises(InputError, match="cannot serve on 256.0.0.1:1"):
        LiveView("256.0.0.1", 1)


def test_video_json_lines_have_fps_a_photo_has_none(media_root):
    done = _webcam("--source", PHOTO, "--headless")
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(x) for x in done.stdout.splitlines()]
    assert "fps" not in record and len(record["faces"]) == 1
    done = _webcam("--source", media_root / "talking_short.mp4", "--headless", "--fast")
    records = [json.loads(x) for x in done.stdout.splitlines()]
    assert len(records) == 115 and all(r["fps"] > 0 for r in records[1:])


def test_piping_into_head_ends_quietly(media_root):
    proc = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPT),
            "--source",
            str(media_root / "talking_short.mp4"),
            "--headless",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert json.loads(proc.stdout.readline())["frame"] == 0
    proc.stdout.close()  # what `| head -1` does
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_a_camera_that_does_not_exist_is_an_error_with_status_1():
    done = _webcam("--source", "9", "--headless", "--reconnect", "0")
    assert done.returncode == 1
    assert "camera 9 cannot be opened" in done.stderr
    assert "sample" not in done.stderr and done.stdout == ""


def test_headless_opencv_says_how_to_get_a_window():
    if not re.search(r"GUI:\s+NONE", cv2.getBuildInformation()):
        pytest.skip("this OpenCV has window support")
    done = _webcam("--source", PHOTO)
    assert done.returncode == 0
    assert "pip install 'opencv-python==" in done.stderr
    assert "--serve 8000" in done.stderr

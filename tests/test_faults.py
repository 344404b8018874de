"""Faults an unattended device meets: a full disk in the middle of a write, and a camera that
stalls, gives empty frames or disappears. The old artifact must survive the first; the stream
must report, retry with back-off and resume after the second, without the caller's loop
ever seeing an exception until the camera is gone for good."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fer_edge.errors import InputError
from fer_edge.stream import FrameSource

ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------- full disk

# Runs in a child process: RLIMIT_FSIZE stands in for a full disk (a write past the limit fails
# with EFBIG once SIGXFSZ is ignored), and the limit must not reach the test process itself.
_FULL_DISK = textwrap.dedent(
    """
    import json, os, resource, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    root = Path(sys.argv[1])
    what = sys.argv[2]

    def disk_full(limit=4096):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    report = {{}}
    if what == "bundle":
        from fer_edge.bundle import load_bundle, save_bundle
        from fer_edge.preprocess import PreprocessSpec
        from sdk_helpers import make_bundle
        old = make_bundle(root, "onnx")
        before = {{p.name: p.read_bytes() for p in old.root.iterdir()}}
        disk_full()
        try:
            save_bundle(old.root, {{"model.onnx": os.urandom(64 * 1024)}},
                        labels=old.labels, preprocess=PreprocessSpec(),
                        model={{"format": "onnx", "file": "model.onnx"}})
            report["raised"] = None
        except OSError as e:
            report["raised"] = e.errno
        after = {{p.name: p.read_bytes() for p in old.root.iterdir()}}
        report["intact"] = before == after
        report["loads"] = load_bundle(old.root).labels == old.labels
    elif what == "checkpoint":
        import torch
        from fer_edge.train.checkpoint import load_checkpoint, save_checkpoint
        path = root / "last.pt"
        save_checkpoint(path, {{"epoch": 3, "w": torch.ones(8)}})
        disk_full(64 * 1024)
        try:
            save_checkpoint(path, {{"epoch": 4, "w": torch.ones(1 << 20)}})
            report["raised"] = None
        except OSError as e:
            report["raised"] = e.errno
        state = load_checkpoint(path, require=())
        report["intact"] = state["epoch"] == 3 and bool((state["w"] == 1).all())
        report["loads"] = True
    report["leftovers"] = sorted(p.name for p in root.rglob(".*.tmp"))
    print(json.dumps(report))
    """
).format(tests=str(ROOT / "tests"))


@pytest.mark.parametrize("what", ["bundle", "checkpoint"])
def test_a_write_that_fills_the_disk_leaves_the_old_artifact(tmp_path, what):
    if what == "checkpoint":
        pytest.importorskip("torch")
    proc = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path), what],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["raised"] == 27  # EFBIG: the write really failed midway
    assert report["intact"] and report["loads"]
    assert report["leftovers"] == []


@pytest.mark.parametrize("kind", ["image", "video"])
def test_cli_reports_a_full_disk_in_one_line(tmp_path, media_root, kind):
    """A CLI command whose output cannot be written exits 2 with the reason and leaves no
    output, not even a cut-off video (OpenCV's video writer does not report failed writes)."""
    script = textwrap.dedent(
        """
        import resource, signal, sys
        from fer_edge.cli import main
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, resource.RLIM_INFINITY))
        sys.exit(main(sys.argv[1:]))
        """
    )
    if kind == "image":
        source, out = media_root / "group_selfie.jpg", tmp_path / "faces.png"
    else:
        source, out = media_root / "talking_short.mp4", tmp_path / "faces.mp4"
    proc = subprocess.run(
        [sys.executable, "-c", script, "predict", str(source), "--annotate", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    assert last.startswith("fer-edge predict: error:")
    assert ("File too large" in last and str(out) in last) or "disk full" in last, last
    assert sorted(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- faulty camera


class ScriptedCamera:
    """A capture device that plays a script shared by every open of it. Steps: an ndarray
    (a frame), ``"empty"`` (read succeeds with no image), ``"fail"`` (read fails: unplugged),
    ``"hang"`` (read blocks until the test ends: a hung driver), ``"closed"`` (the next open
    fails). When the script runs out the camera is gone: opens fail."""

    def __init__(self, script: list):
        self.script = list(script)
        self.lock = threading.Lock()
        self.opens: list[float] = []  # monotonic time of each open attempt
        self.released = threading.Event()

    def __call__(self, index: int):
        self.opens.append(time.monotonic())
        return _Capture(self)

    def next(self):
        with self.lock:
            return self.script.pop(0) if self.script else "gone"


class _Capture:
    def __init__(self, cam: ScriptedCamera):
        self.cam = cam
        step = cam.script[0] if cam.script else "gone"
        step = step if isinstance(step, str) else "frame"
        self.ok = step not in ("closed", "gone")
        if step == "closed":
            cam.next()

    def isOpened(self) -> bool:
        return self.ok

    def read(self):
        step = self.cam.next()
        if isinstance(step, np.ndarray):
            return True, step
        if step == "empty":
            return True, None
        if step == "hang":
            self.cam.released.wait(30)
            return False, None
        return False, None  # "fail", "closed" and "gone" read as a lost device

    def release(self) -> None:
        pass


def _frames(n: int, start: int = 0) -> list[np.ndarray]:
    return [np.full((8, 8, 3), start + i, np.uint8) for i in range(n)]


def _consume(src: FrameSource) -> tuple[list[int], Exception | None]:
    """What a caller's loop sees: the frame values in order, and how the stream ended."""
    seen = []
    try:
        for frame in src:
            seen.append(int(frame.image[0, 0, 0]))
    except InputError as e:
        assert "reading frames failed" not in str(e)  # the fake camera itself broke
        return seen, e
    return seen, None


def _camera(cam: ScriptedCamera, **options) -> FrameSource:
    options = {"reconnect": 3, "retry_delay": 0.05, "stall_timeout": 0.5, **options}
    return FrameSource(0, drop=False, capture_factory=cam, **options)


def test_empty_frames_are_skipped_and_counted():
    cam = ScriptedCamera([*_frames(3), "empty", "empty", *_frames(3, 3)])
    src = _camera(cam, reconnect=0)
    seen, end = _consume(src)
    assert seen == list(range(6))
    assert src.empty_frames == 2 and src.reconnects == 0
    assert isinstance(end, InputError) and "could not be reopened" in str(end)


def test_an_unplugged_camera_is_reopened_with_back_off_and_the_stream_resumes():
    cam = ScriptedCamera([*_frames(3), "fail", "closed", "closed", *_frames(3, 3)])
    src = _camera(cam, retry_delay=0.1, max_retry_delay=1.0)
    seen, end = _consume(src)
    assert seen == list(range(6))  # nothing lost, nothing repeated, the loop kept running
    assert src.reconnects == 1
    gaps = np.diff(cam.opens)[:3]  # waits before the 2nd, 3rd and 4th open: 0.1, 0.2, 0.4 s
    assert gaps[1] > 1.6 * gaps[0] and gaps[2] > 1.6 * gaps[1], gaps
    assert isinstance(end, InputError)  # only the final disappearance ends the stream


def test_back_off_is_capped():
    cam = ScriptedCamera(["closed"] * 5)
    src = _camera(cam, reconnect=4, retry_delay=0.05, max_retry_delay=0.1)
    seen, end = _consume(src)
    assert seen == [] and isinstance(end, InputError) and "cannot be opened" in str(end)
    assert max(np.diff(cam.opens)) < 0.3


def test_a_camera_that_only_gives_empty_frames_is_reopened():
    cam = ScriptedCamera([*_frames(2), *["empty"] * 100, *_frames(2, 2)])

    real_next = cam.next

    def next_step():  # empty reads take time, like a real camera's frame period
        step = real_next()
        if isinstance(step, str) and step == "empty":
            time.sleep(0.005)
        return step

    cam.next = next_step
    src = _camera(cam, stall_timeout=0.3)
    seen, _ = _consume(src)
    assert seen == [0, 1, 2, 3]
    assert src.reconnects >= 1 and src.empty_frames > 0


def test_a_hung_read_is_abandoned_and_the_camera_reopened():
    cam = ScriptedCamera([*_frames(2), "hang", *_frames(2, 2)])
    src = _camera(cam, stall_timeout=0.4)
    t0 = time.monotonic()
    seen, end = _consume(src)
    cam.released.set()
    assert seen == [0, 1, 2, 3]
    assert src.stalls == 1
    assert time.monotonic() - t0 < 10
    assert isinstance(end, InputError)


def test_a_camera_that_keeps_hanging_ends_the_stream_with_a_clear_error():
    cam = ScriptedCamera([*_frames(1), *["hang"] * 10])
    src = _camera(cam, stall_timeout=0.2, reconnect=2)
    seen, end = _consume(src)
    cam.released.set()
    assert seen == [0]
    assert isinstance(end, InputError) and "stalled" in str(end)
    assert src.stalls == 3

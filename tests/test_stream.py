"""Frame sources on a capture thread, tracking and score smoothing."""

from __future__ import annotations

import collections
import time

import cv2
import numpy as np
import pytest
from sdk_helpers import make_bundle

from fer_edge import Recognizer
from fer_edge.errors import InputError
from fer_edge.stream import FrameSource, source_kind, stream
from fer_edge.track import IouTracker

VIDEO_FRAMES = 115  # talking_short.mp4


@pytest.fixture(scope="module")
def video(media_root):
    return media_root / "talking_short.mp4"


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    return Recognizer(make_bundle(tmp_path_factory.mktemp("st"), "onnx"), backend="onnxruntime")


def test_video_frames_arrive_complete_and_in_order(video):
    frames = list(FrameSource(video))
    assert [f.index for f in frames] == list(range(VIDEO_FRAMES))
    assert frames[0].image.shape == (336, 596, 3)


def test_a_slow_consumer_drops_old_frames_in_drop_mode(video):
    src = FrameSource(video, drop=True)
    seen = []
    for f in src:
        seen.append(f.index)
        time.sleep(0.02)
    assert seen == sorted(seen) and seen[-1] == VIDEO_FRAMES - 1
    assert len(seen) < VIDEO_FRAMES and src.dropped == VIDEO_FRAMES - len(seen)


def test_leaving_early_stops_the_capture_thread(video):
    src = FrameSource(video)
    for f in src:
        if f.index == 3:
            break
    assert src._thread is not None and not src._thread.is_alive()


def test_folder_skips_unreadable_images(tmp_path, media_root):
    (tmp_path / "a.jpg").write_bytes((media_root / "portrait.jpg").read_bytes())
    (tmp_path / "b.png").write_bytes(b"not a png")
    cv2.imwrite(str(tmp_path / "c.png"), np.zeros((20, 30), np.uint8))
    src = FrameSource(tmp_path)
    names = [f.name.rsplit("/", 1)[-1] for f in src]
    assert names == ["a.jpg", "c.png"] and src.unreadable == [str(tmp_path / "b.png")]


def test_bad_sources_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        FrameSource(tmp_path / "missing.mp4")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="unknown file type"):
        FrameSource(tmp_path / "notes.txt")
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match="cannot open"):
        FrameSource(tmp_path / "broken.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        list(FrameSource(tmp_path / "empty"))
    assert source_kind(0) == source_kind("2") == "camera"


def test_missing_camera_gives_a_clear_error_after_retries():
    src = FrameSource(97, reconnect=1, retry_delay=0.01)
    t = time.perf_counter()
    with pytest.raises(InputError, match="camera 97 cannot be opened after 2 attempts"):
        list(src)
    assert time.perf_counter() - t < 10


def test_stream_tracks_the_face_of_a_video(rec, video):
    ids = collections.Counter()
    n = 0
    for _frame, faces in stream(rec, video):
        n += 1
        ids.update(f.track_id for f in faces)
    assert n == VIDEO_FRAMES
    assert ids.most_common(1)[0][1] >= 0.9 * VIDEO_FRAMES  # one track for the one person
    # tracking was for that stream only: the next starts with fresh ids, plain calls have none
    first, faces = next(stream(rec, video))
    assert [f.track_id for f in faces] == [1]
    assert [f.track_id for f in rec(first.image)] == [None]


def test_a_stream_session_takes_frames_only_inside_its_with_block(rec, video):
    frame = next(iter(FrameSource(video))).image
    session = rec.stream_session()
    with pytest.raises(InputError, match="inside its with block"):
        session(frame)
    with session:
        assert [f.track_id for f in session(frame)] == [1]
    with pytest.raises(InputError, match="inside its with block"):
        session(frame)


def test_tracker_keeps_ids_and_smooths_scores():
    tr = IouTracker(smoothing=0.5, max_missed=1)
    a, b = [0.9, 0.1], [0.1, 0.9]
    ids, p = tr.update([[0, 0, 10, 10], [50, 50, 60, 60]], [a, b])
    assert ids == [1, 2] and np.allclose(p, [a, b])
    # The faces move a little and the first one's scores flip for a frame: smoothed, not flipped.
    ids, p = tr.update([[51, 51, 61, 61], [1, 1, 11, 11]], [b, b])
    assert ids == [2, 1]
    np.testing.assert_allclose(p[1], [0.5, 0.5])
    ids, p = tr.update([[1, 1, 11, 11]], [a])
    assert ids == [1] and p[0][0] > 0.5
    tr.update([[1, 1, 11, 11]], [a])  # track 2 missed two frames: gone
    ids, _ = tr.update([[51, 51, 61, 61]], [b])
    assert ids == [3]


def test_tracking_smooths_label_flicker(rec, video):
    # The same frames, classified with and without smoothing: fewer label changes with it.
    frames = [f.image for f in FrameSource(video, max_frames=60)]

    def changes(track: bool) -> int:
        with rec.stream_session(track=track) as session:
            labels = [tuple(f.label for f in session(fr)) for fr in frames]
        return sum(x != y for x, y in zip(labels, labels[1:], strict=False))

    assert changes(track=True) < changes(track=False)
    with pytest.raises(InputError):
        IouTracker(smoothing=1.0)

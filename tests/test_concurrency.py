"""Recognizers under threads. The rule (docs/sdk.md): a Recognizer may be shared by any number of
threads and gives each the result it would get alone; a stream session belongs to one stream,
and a second session or a second concurrent caller gets an InputError saying so."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from sdk_helpers import make_bundle

from fer_edge import Recognizer
from fer_edge.errors import InputError
from fer_edge.stream import stream

THREADS = 4
CALLS = 3  # per thread


@pytest.fixture(scope="module")
def frames(media_root):
    """Real frames with different faces, so that mixed-up results would show."""
    paths = ["group_selfie.jpg", "portrait.jpg", "no-faces.jpg"]
    return [cv2.imread(str(media_root / p)) for p in paths]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("conc")
    return {fmt: make_bundle(root, fmt) for fmt in ("onnx", "tflite")}


def _summary(faces) -> list[tuple]:
    return [(tuple(np.round(f.box, 3)), f.label, np.round(f.probs, 5).tobytes()) for f in faces]


def _hammer(calls) -> list:
    """Run ``calls`` (callables) from THREADS threads at once, CALLS rounds each."""
    start = threading.Barrier(THREADS)

    def worker(i):
        start.wait()
        return [calls[(i + k) % len(calls)]() for k in range(CALLS)], i

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(worker, range(THREADS)))


BACKENDS = [("onnx", "onnxruntime"), ("tflite", "tflite"), ("onnx", "openvino")]


@pytest.mark.parametrize(("fmt", "backend"), BACKENDS)
def test_one_recognizer_shared_by_threads_gives_each_its_own_result(bundles, frames, fmt, backend):
    pytest.importorskip(
        {"onnxruntime": "onnxruntime", "tflite": "ai_edge_litert"}.get(backend, backend)
    )
    rec = Recognizer(bundles[fmt], backend=backend, detector="blazeface", num_threads=1)
    expected = [_summary(rec(f)) for f in frames]
    assert any(expected), "no face found in the test frames: nothing would be compared"
    calls = [lambda f=f: _summary(rec(f)) for f in frames]
    for results, i in _hammer(calls):
        for k, got in enumerate(results):
            assert got == expected[(i + k) % len(frames)]


def test_recognizers_in_threads_match_serial_results(bundles, frames):
    recs = [
        Recognizer(bundles["tflite"], detector="blazeface", num_threads=1) for _ in range(THREADS)
    ]
    expected = [_summary(recs[0](f)) for f in frames]
    start = threading.Barrier(THREADS)

    def worker(i):
        start.wait()
        return [_summary(recs[i](frames[(i + k) % len(frames)])) for k in range(CALLS)], i

    with ThreadPoolExecutor(THREADS) as pool:
        for results, i in pool.map(worker, range(THREADS)):
            assert results == [expected[(i + k) % len(frames)] for k in range(CALLS)]


def test_a_tracking_stream_session_refuses_a_second_thread(bundles, frames, monkeypatch):
    rec = Recognizer(bundles["onnx"], backend="onnxruntime", detector="blazeface")
    inside, release = threading.Event(), threading.Event()
    infer = rec.infer

    def slow_infer(crops):  # hold the first frame inside the session
        inside.set()
        release.wait(10)
        return infer(crops)

    with rec.stream_session() as session:
        monkeypatch.setattr(rec, "infer", slow_infer)
        first = threading.Thread(target=session, args=(frames[0],))
        first.start()
        assert inside.wait(10)
        with pytest.raises(InputError, match="one Recognizer per stream and per thread"):
            session(frames[1])
        release.set()
        first.join(10)
        monkeypatch.undo()
        assert session(frames[0])  # usable again once the first frame is done


def test_one_recognizer_cannot_run_two_streams_at_once(bundles, media_root):
    rec = Recognizer(bundles["onnx"], backend="onnxruntime", detector="blazeface")
    video = media_root / "talking_short.mp4"
    first = stream(rec, video)
    next(first)
    with pytest.raises(InputError, match="already running a stream"):
        next(stream(rec, video))
    first.close()
    assert next(stream(rec, video))[0].index == 0  # the session ended with the first stream

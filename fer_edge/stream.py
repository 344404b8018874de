"""Frames from a camera, a video file, an image or an image folder, read on a background thread
so that inference never waits on the capture device.

>>> from fer_edge import Recognizer
>>> from fer_edge.stream import stream
>>> for frame, faces in stream(Recognizer(), 0):   # camera 0; or "clip.mp4", "photos/"
...     print(frame.index, [f.label for f in faces])

For a camera only the newest frame is kept (old ones are dropped when inference is slower than
the camera); files are read completely, in order.

A camera is watched, because kiosks and robots run unattended for weeks:
- empty frames are skipped and counted (``empty_frames``);
- a camera that fails to open, fails a read, or gives no usable frame for ``stall_timeout``
  seconds is reopened, waiting ``retry_delay`` seconds, doubling up to ``max_retry_delay``,
  for up to ``reconnect`` attempts; a frame resets the count, so the stream resumes;
- a read that blocks for ``stall_timeout`` seconds (a hung driver) is abandoned and the camera
  opened afresh on a new capture thread;
- each event is counted (``reconnects``, ``stalls``) and logged as a warning on the
  ``fer_edge.stream`` logger; only a camera that stays gone ends the stream, with an
  :class:`~fer_edge.errors.InputError` that says so.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .data import IMAGE_EXTS, image_problem, read_image
from .errors import InputError

VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".gif"}
_END = object()
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    """One frame: BGR (or gray) uint8 ``image``, its ``index`` in the source, ``name`` (the file
    it came from, or ``camera N``), and ``time`` (seconds since the source opened)."""

    image: np.ndarray
    index: int
    name: str
    time: float


def source_kind(source: int | str | os.PathLike) -> str:
    """``camera``, ``video``, ``image`` or ``folder``; InputError for anything else."""
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        return "camera"
    path = Path(source)
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise InputError(
            f"{str(path)!r} does not exist (pass a camera index, video, image or folder)"
        )
    if not path.is_file():
        # A FIFO, socket or device named clip.mp4: OpenCV's open would block forever (in C,
        # where Ctrl-C cannot reach it) or read without end.
        raise InputError(f"{path.name} is not a regular file (a FIFO or a device?)")
    ext = path.suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    raise InputError(f"{path.name}: unknown file type {ext!r}; expected an image or a video")


class FrameSource:
    """Iterate frames of ``source`` (camera index, video, image, or folder of images).

    ``drop``: keep only the newest frame (default for cameras); ``max_frames``: stop after this
    many. Cameras only: ``reconnect``: attempts to reopen a lost camera; ``retry_delay``: the
    first wait between them, doubled each time up to ``max_retry_delay``; ``stall_timeout``:
    seconds without a usable frame (or stuck in a read) before the camera is reopened;
    ``capture_factory``: makes the capture object from the camera index (default
    ``cv2.VideoCapture``; anything with ``isOpened()``, ``read()`` and ``release()``).
    """

    def __init__(
        self,
        source: int | str | os.PathLike,
        drop: bool | None = None,
        reconnect: int = 3,
        retry_delay: float = 1.0,
        max_frames: int | None = None,
        stall_timeout: float = 5.0,
        max_retry_delay: float = 8.0,
        capture_factory: Callable[[int], object] | None = None,
    ):
        self.kind = source_kind(source)
        self.source = int(source) if self.kind == "camera" else Path(source)
        self.drop = self.kind == "camera" if drop is None else drop
        if reconnect < 0 or retry_delay < 0 or max_retry_delay < retry_delay or stall_timeout <= 0:
            raise InputError(
                "need reconnect >= 0, 0 <= retry_delay <= max_retry_delay and stall_timeout > 0"
            )
        self.reconnect, self.retry_delay, self.max_frames = reconnect, retry_delay, max_frames
        self.max_retry_delay, self.stall_timeout = max_retry_delay, stall_timeout
        self._capture = capture_factory or cv2.VideoCapture
        self.dropped = 0  # frames discarded because inference was behind the camera
        self.unreadable: list[str] = []  # image files in a folder that could not be decoded
        self.empty_frames = 0  # camera reads that gave no image
        self.reconnects = 0  # times a lost or stalled camera was reopened
        self.stalls = 0  # reads abandoned after blocking for stall_timeout
        self._stalls_in_a_row = 0
        self._queue: queue.Queue = queue.Queue(maxsize=1 if self.drop else 8)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._generation = 0  # bumped when a stalled capture thread is abandoned
        self._heartbeat = time.monotonic()  # last time the capture thread made progress
        self._count = 0  # frames delivered so far (the next frame's index)
        self._t0 = time.monotonic()
        if self.kind == "video":
            self._check_video()

    @property
    def name(self) -> str:
        return f"camera {self.source}" if self.kind == "camera" else str(self.source)

    def _check_video(self) -> None:
        cap = cv2.VideoCapture(str(self.source))
        try:
            if not cap.isOpened():
                raise InputError(f"{self.source}: OpenCV cannot open this video")
        finally:
            cap.release()

    # Producer side (background thread).

    def _put(self, item: object) -> bool:
        """Queue an item; False once the consumer has closed the source."""
        while not self._stop.is_set():
            self._heartbeat = time.monotonic()  # waiting on a slow consumer is not a stall
            if self.drop and isinstance(item, Frame):
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _frames(self, generation: int) -> Iterator[tuple[np.ndarray, str]]:
        if self.kind == "image":
            img, reason = image_problem(self.source)
            if img is None:
                raise InputError(f"{self.source}: {reason}")
            yield img, str(self.source)
        elif self.kind == "folder":
            files = sorted(p for p in self.source.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
            if not files:
                raise InputError(f"{self.source}: no images in this folder")
            for p in files:
                img = read_image(p)
                if img is None:
                    self.unreadable.append(str(p))
                    continue
                yield img, str(p)
        elif self.kind == "video":
            cap = cv2.VideoCapture(str(self.source))
            try:
                while not self._stop.is_set():
                    ok, img = cap.read()
                    if not ok:
                        return
                    yield img, str(self.source)
            finally:
                cap.release()
        else:
            yield from self._camera(generation)

    def _current(self, generation: int) -> bool:
        return not self._stop.is_set() and generation == self._generation

    def _camera(self, generation: int) -> Iterator[tuple[np.ndarray, str]]:
        """Frames of the camera, reopening it after a failed open or read, or when it gives
        only empty frames for ``stall_timeout``; waits back off exponentially, and a good frame
        resets them. Ends with InputError after ``reconnect + 1`` failures in a row."""
        failures, delay = 0, self.retry_delay
        opened = generation > 0  # a new capture thread after a stall: the camera was seen
        while self._current(generation):
            if failures:
                if failures > self.reconnect:
                    what = "was lost and could not be reopened" if opened else "cannot be opened"
                    raise InputError(
                        f"camera {self.source} {what} after {failures} attempts "
                        "(is a camera connected, and not in use by another program?)"
                    )
                log.warning("camera %s: no frames; reopening in %.2f s", self.source, delay)
                self._heartbeat = time.monotonic() + delay  # waiting is progress, not a stall
                self._stop.wait(delay)
                delay = min(2 * delay, self.max_retry_delay)
                if not self._current(generation):
                    return
            self._heartbeat = time.monotonic()
            cap = self._capture(self.source)
            self._heartbeat = time.monotonic()
            if not cap.isOpened():
                cap.release()
                failures += 1
                continue
            if opened:
                self.reconnects += 1
            opened = True
            try:
                last_good = time.monotonic()
                while self._current(generation):
                    ok, img = cap.read()
                    self._heartbeat = now = time.monotonic()
                    if not ok:
                        break  # lost
                    if img is None or getattr(img, "size", 0) == 0:
                        self.empty_frames += 1
                        if now - last_good > self.stall_timeout:
                            break  # only empty frames: treat as lost
                        continue
                    last_good, failures, delay = now, 0, self.retry_delay
                    yield img, self.name
            finally:
                cap.release()
            failures += 1

    def _run(self, generation: int = 0) -> None:
        try:
            for img, name in self._frames(generation):
                if not self._current(generation):
                    return  # abandoned after a stall: a newer capture thread delivers frames
                if self.max_frames is not None and self._count >= self.max_frames:
                    break
                frame = Frame(img, self._count, name, time.monotonic() - self._t0)
                self._count += 1
                if not self._put(frame):
                    return
        except InputError as e:
            self._put(e)
            return
        except Exception as e:  # a capture backend failing in an unforeseen way
            self._put(InputError(f"{self.name}: reading frames failed: {e}"))
            return
        self._put(_END)

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(self._generation,), name="fer-edge-capture", daemon=True
        )
        self._thread.start()

    def _on_timeout(self) -> None:
        """No frame for ``stall_timeout``: if the capture thread is stuck in a call (a read or
        open that does not return), abandon it and open the camera on a new thread."""
        if time.monotonic() - self._heartbeat < self.stall_timeout:
            return  # the capture thread is alive: reconnecting, or the camera is just slow
        self.stalls += 1
        self._stalls_in_a_row += 1
        if self._stalls_in_a_row > self.reconnect:
            raise InputError(
                f"camera {self.source} stalled: no frame for {self.stall_timeout:g} s, "
                f"{self._stalls_in_a_row} times in a row"
            )
        log.warning(
            "camera %s stalled (no frame for %.1f s); reopening it", self.source, self.stall_timeout
        )
        self._generation += 1
        self._heartbeat = time.monotonic()
        self._start()

    # Consumer side.

    def __iter__(self) -> Iterator[Frame]:
        if self._thread is not None:
            raise InputError("a FrameSource can be iterated once; open a new one")
        self._start()
        # Files end or fail on their own; only a camera can hang without either.
        timeout = self.stall_timeout if self.kind == "camera" else None
        try:
            while True:
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    self._on_timeout()
                    continue
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise item
                self._stalls_in_a_row = 0
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop the capture thread and release the device."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stream(
    recognizer,
    source: int | str | os.PathLike | FrameSource,
    track: bool | None = None,
    **source_options,
):
    """Yield ``(frame, faces)`` for every frame of ``source`` through ``recognizer``.

    ``track`` (default: on for cameras and videos, off for photos) follows faces across frames
    and smooths their scores, in a :meth:`~fer_edge.recognizer.Recognizer.stream_session` of
    this stream's own.
    """
    src = source if isinstance(source, FrameSource) else FrameSource(source, **source_options)
    if track is None:
        track = src.kind in ("camera", "video")
    with recognizer.stream_session(track=track) as session, src:
        for frame in src:
            yield frame, session(frame.image)

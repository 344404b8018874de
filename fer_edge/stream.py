"""Frames from a camera, a video file, an image or an image folder, read on a background thread
so that inference never waits on the capture device.

>>> from fer_edge import Recognizer
>>> from fer_edge.stream import stream
>>> for frame, faces in stream(Recognizer(), 0):   # camera 0; or "clip.mp4", "photos/"
...     print(frame.index, [f.label for f in faces])

For a camera only the newest frame is kept (old ones are dropped when inference is slower than
the camera); files are read completely, in order. A camera that fails to open or stops
delivering frames is reopened ``reconnect`` times before :class:`~fer_edge.errors.InputError`
says so.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .data import IMAGE_EXTS, read_image
from .errors import InputError

VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".gif"}
_END = object()


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
    ext = path.suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    raise InputError(f"{path.name}: unknown file type {ext!r}; expected an image or a video")


class FrameSource:
    """Iterate frames of ``source`` (camera index, video, image, or folder of images).

    ``drop``: keep only the newest frame (default for cameras); ``reconnect``: attempts to reopen
    a camera; ``retry_delay``: seconds between them; ``max_frames``: stop after this many.
    """

    def __init__(
        self,
        source: int | str | os.PathLike,
        drop: bool | None = None,
        reconnect: int = 3,
        retry_delay: float = 1.0,
        max_frames: int | None = None,
    ):
        self.kind = source_kind(source)
        self.source = int(source) if self.kind == "camera" else Path(source)
        self.drop = self.kind == "camera" if drop is None else drop
        self.reconnect, self.retry_delay, self.max_frames = reconnect, retry_delay, max_frames
        self.dropped = 0  # frames discarded because inference was behind the camera
        self.unreadable: list[str] = []  # image files in a folder that could not be decoded
        self._queue: queue.Queue = queue.Queue(maxsize=1 if self.drop else 8)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
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

    def _frames(self) -> Iterator[tuple[np.ndarray, str]]:
        if self.kind == "image":
            img = read_image(self.source)
            if img is None:
                raise InputError(f"{self.source}: cannot decode this image")
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
            yield from self._camera()

    def _open_camera(self) -> cv2.VideoCapture | None:
        for attempt in range(self.reconnect + 1):
            if self._stop.is_set():
                return None
            cap = cv2.VideoCapture(self.source)
            if cap.isOpened():
                return cap
            cap.release()
            if attempt < self.reconnect:
                time.sleep(self.retry_delay)
        return None

    def _camera(self) -> Iterator[tuple[np.ndarray, str]]:
        opened_once = False
        while not self._stop.is_set():
            cap = self._open_camera()
            if cap is None:
                what = "was lost and could not be reopened" if opened_once else "cannot be opened"
                raise InputError(
                    f"camera {self.source} {what} after {self.reconnect + 1} attempts "
                    "(is a camera connected, and not in use by another program?)"
                )
            opened_once = True
            try:
                while not self._stop.is_set():
                    ok, img = cap.read()
                    if not ok or img is None:
                        break  # lost: reopen
                    yield img, self.name
            finally:
                cap.release()

    def _run(self) -> None:
        try:
            for i, (img, name) in enumerate(self._frames()):
                if self.max_frames is not None and i >= self.max_frames:
                    break
                if not self._put(Frame(img, i, name, time.monotonic() - self._t0)):
                    return
        except InputError as e:
            self._put(e)
            return
        except Exception as e:  # a capture backend failing in an unforeseen way
            self._put(InputError(f"{self.name}: reading frames failed: {e}"))
            return
        self._put(_END)

    # Consumer side.

    def __iter__(self) -> Iterator[Frame]:
        if self._thread is not None:
            raise InputError("a FrameSource can be iterated once; open a new one")
        self._thread = threading.Thread(target=self._run, name="fer-edge-capture", daemon=True)
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise item
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
    and smooths their scores; the tracker starts fresh for each stream.
    """
    src = source if isinstance(source, FrameSource) else FrameSource(source, **source_options)
    if track is None:
        track = src.kind in ("camera", "video")
    previous = recognizer.tracker
    recognizer.set_tracking(track)
    try:
        with src:
            for frame in src:
                yield frame, recognizer(frame.image)
    finally:
        recognizer.tracker = previous

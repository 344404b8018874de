"""Emotions of the faces in images, folders of images and videos.

Prints one line per face (or, with --json, one JSON object per image or video frame; frames of
a video carry their index and time in seconds). --csv writes one row per face (a frame with no
face gets a row with no box). With --no-detect every image is taken as one face crop, as in FER
datasets. --annotate writes the image (for one image), a folder of annotated images (for a
folder) or an annotated video (.mp4 in H.264 where the OpenCV build has it, else .webm plays in
browsers). Videos inside a folder are read as videos.

examples:
  fer-edge predict photo.jpg
  fer-edge predict a.jpg b.png clip.mp4 --csv faces.csv
  fer-edge predict photos/ --json > faces.jsonl
  fer-edge predict clip.mp4 --annotate clip_faces.webm
  fer-edge predict fer2013/test/happy --no-detect --model my_bundle/
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2

from . import atomic
from .errors import InputError
from .formats import BACKEND_CHOICES
from .stream import VIDEO_EXTS, FrameSource, source_kind

# fourccs to try per video container, browser-playable first: H.264 (avc1) needs an OpenCV
# build with an H.264 encoder, which the PyPI wheels lack; they fall back to MPEG-4 part 2,
# which browsers do not play. VP8 in WebM is in every build and plays in every browser.
VIDEO_CODECS = {
    ".mp4": ("avc1", "mp4v"),
    ".m4v": ("avc1", "mp4v"),
    ".mov": ("avc1", "mp4v"),
    ".mkv": ("avc1", "VP80", "mp4v"),
    ".webm": ("VP80",),
    ".avi": ("MJPG",),
}
BROWSER_CODECS = {"avc1", "VP80"}
DETECTOR_CHOICES = ["auto", "photo", "blazeface", "blazeface_full", "haar"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="images, folders or videos")
    p.add_argument(
        "--model", default="default", help="model bundle folder, or a shipped name: default, ..."
    )
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES)
    p.add_argument(
        "--detector",
        default="auto",
        choices=DETECTOR_CHOICES,
        help="face detector; auto: photo (BlazeFace full-range on 2x2 tiles: finds the small "
        "faces of group photos) for images, blazeface (short-range, fastest) for videos",
    )
    p.add_argument(
        "--tiles", type=int, default=None, help="BlazeFace: n x n tiles (auto: see --detector)"
    )
    p.add_argument("--no-detect", action="store_true", help="treat each image as one face crop")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="inference threads (the runtime's default when not given)",
    )
    p.add_argument("--json", action="store_true", help="JSON lines: one object per image/frame")
    p.add_argument("--annotate", metavar="OUT", help="write the annotated image, folder or video")
    p.add_argument("--csv", metavar="OUT", help="write one CSV row per face and frame")
    p.add_argument("--no-track", action="store_true", help="videos: no tracking or smoothing")


class _Annotator:
    """Writes annotated frames to an image, a folder or a video, each atomically."""

    def __init__(self, out: Path, kind: str, fps: float):
        self.out, self.kind, self.fps = out, kind, fps
        self._writer = None
        self._tmp: Path | None = None
        self._frames = 0
        if kind == "video":
            ext = out.suffix.lower()
            if ext not in VIDEO_CODECS:
                raise InputError(f"--annotate for a video needs one of {', '.join(VIDEO_CODECS)}")
            self.codec: str | None = None
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=ext, dir=out.parent)
            os.close(fd)
            self._tmp = Path(tmp)
        elif kind == "image" and out.suffix.lower() not in {".png", ".jpg", ".jpeg", ".bmp"}:
            raise InputError("--annotate for an image needs a .png, .jpg or .bmp file name")

    def write(self, image, name: str) -> None:
        if self.kind == "video":
            if self._writer is None:
                self._open_writer(image.shape[1], image.shape[0])
            self._writer.write(image)
            self._frames += 1
            return
        dest = self.out if self.kind == "image" else self.out / (Path(name).stem + ".png")
        ok, buf = cv2.imencode(dest.suffix or ".png", image)
        if not ok:
            raise InputError(f"cannot encode {dest}")
        atomic.write_bytes(dest, buf.tobytes())

    def _open_writer(self, w: int, h: int) -> None:
        """The first codec of the container that this OpenCV build can write."""
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # per-codec probes
        try:
            for codec in VIDEO_CODECS[self.out.suffix.lower()]:
                writer = cv2.VideoWriter(
                    str(self._tmp), cv2.VideoWriter_fourcc(*codec), self.fps, (w, h)
                )
                if writer.isOpened():
                    self._writer, self.codec = writer, codec
                    break
                writer.release()
        finally:
            cv2.utils.logging.setLogLevel(level)
        if self._writer is None:
            raise InputError(f"OpenCV cannot write the video {self.out}")
        if self.codec not in BROWSER_CODECS:
            print(
                f"fer-edge predict: this OpenCV build has no H.264 encoder; {self.out.name} is "
                f"{self.codec}, which browsers do not play (name it .webm for VP8)",
                file=sys.stderr,
            )

    def _check_video(self) -> None:
        """OpenCV's writer reports no failed write (a full disk, a quota), so read back what it
        wrote rather than publish a cut-off video."""
        cap = cv2.VideoCapture(str(self._tmp))
        try:
            written = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        finally:
            cap.release()
        if written < self._frames:
            self._tmp.unlink(missing_ok=True)
            raise OSError(
                f"writing the video failed after {written} of {self._frames} frames "
                "(is the disk full?)"
            )

    def close(self, success: bool) -> None:
        if self._writer is not None:
            self._writer.release()
        if self._tmp is not None:
            if success and self._writer is not None:
                self._check_video()
                os.chmod(self._tmp, atomic._umask_mode(0o666))  # mkstemp made it 0600
                os.replace(self._tmp, self.out)
            else:
                self._tmp.unlink(missing_ok=True)


def _video_fps(path: Path) -> float:
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    cap.release()
    return fps if 1 <= fps <= 240 else 25.0


def _detector(name: str, tiles: int | None, threads: int | None, kind: str):
    from .detect import load_detector

    if name == "auto":
        name = "photo" if kind in ("image", "folder") and tiles is None else "blazeface"
    if name == "haar":
        if tiles:
            raise InputError("--tiles applies to the BlazeFace detectors only")
        return load_detector(name)
    if tiles is None:
        return load_detector(name, threads)
    return load_detector(name, threads, tiles=tiles)


def expand_sources(paths: list[str]) -> list[tuple[str, str]]:
    """``(path, kind)`` for every input: a folder's images are one source and each video in it
    is a source of its own, so that no video is skipped."""
    sources = []
    for path in paths:
        kind = source_kind(path)
        if kind == "camera":
            raise InputError("predict reads files; for a camera use examples/webcam.py")
        if kind != "folder":
            sources.append((path, kind))
            continue
        videos = sorted(p for p in Path(path).rglob("*") if p.suffix.lower() in VIDEO_EXTS)
        images = _has_images(Path(path))
        if images:
            sources.append((path, "folder"))
        sources += [(str(v), "video") for v in videos]
        if not images and not videos:
            raise InputError(f"{path}: no images or videos in this folder")
    return sources


def _has_images(folder: Path) -> bool:
    from .data import IMAGE_EXTS

    return any(p.suffix.lower() in IMAGE_EXTS for p in folder.rglob("*"))


class _CsvWriter:
    """One row per face and frame (a frame without faces: one row with no box), the per-label
    probabilities as columns; like ``fer``'s ``to_pandas``: ``pandas.read_csv(OUT)``."""

    def __init__(self, file, labels: tuple[str, ...]):
        self._csv = csv.writer(file)
        self._csv.writerow(
            ["source", "frame", "time_s", "face", "x1", "y1", "x2", "y2", "label", "score"]
            + list(labels)
        )
        self._blank = [""] * (7 + len(labels))

    def write(self, source: str, frame, time_s, faces) -> None:
        if not faces:
            self._csv.writerow([source, frame, time_s, *self._blank])
        for i, f in enumerate(faces):
            self._csv.writerow(
                [source, frame, time_s, i + 1, *(round(v, 1) for v in f.box), f.label]
                + [round(f.score, 4)]
                + [round(float(p), 4) for p in f.probs]
            )


def predict(
    paths: list[str],
    model: str = "default",
    backend: str = "auto",
    detector: str = "auto",
    tiles: int | None = None,
    no_detect: bool = False,
    threads: int | None = None,
    json_lines: bool = False,
    annotate: str | None = None,
    csv_path: str | None = None,
    track: bool = True,
    out=None,
) -> tuple[int, int]:
    """Predict every face of ``paths`` (images, folders, videos), printing lines (or JSON
    lines) to ``out``; optionally annotated output and a CSV. Returns (frames, faces)."""
    from .draw import draw_faces
    from .recognizer import Recognizer
    from .stream import stream

    out = out or sys.stdout
    if threads is not None and threads < 1:
        raise InputError("--threads must be at least 1")
    if detector not in DETECTOR_CHOICES:
        raise InputError(
            f"unknown detector {detector!r}; choose from {', '.join(DETECTOR_CHOICES)}"
        )
    sources = expand_sources(list(paths))
    if annotate and len(sources) > 1:
        raise InputError(
            f"--annotate writes one output; got {len(sources)} inputs ("
            + ", ".join(p for p, _ in sources[:4])
            + "); annotate them one at a time"
        )
    recs: dict[bool, Recognizer] = {}  # one per detector: photos, videos
    csv_out = None
    n_frames = n_faces = 0
    with contextlib.ExitStack() as files:
        for path, kind in sources:
            photo = kind in ("image", "folder")
            if photo not in recs:
                det = None if no_detect else _detector(detector, tiles, threads, kind)
                recs[photo] = Recognizer(model, backend=backend, detector=det, num_threads=threads)
            rec = recs[photo]
            if csv_path and csv_out is None:  # written atomically: complete, or not at all
                tmp = files.enter_context(atomic.atomic_path(csv_path))
                csv_out = _CsvWriter(files.enter_context(open(tmp, "w", newline="")), rec.labels)
            source = FrameSource(path)
            fps = _video_fps(Path(path)) if kind == "video" else 0.0
            annotator = _Annotator(Path(annotate), kind, fps) if annotate else None
            done = False
            try:
                for frame, faces in stream(rec, source, track=kind == "video" and track):
                    n_frames += 1
                    n_faces += len(faces)
                    t = round(frame.index / fps, 3) if kind == "video" else None
                    if json_lines:
                        record = {"source": frame.name, "faces": [f.to_dict() for f in faces]}
                        if kind == "video":
                            record.update(frame=frame.index, time=t)
                        print(json.dumps(record), file=out, flush=True)
                    else:
                        where = frame.name + (f" frame {frame.index}" if kind == "video" else "")
                        if not faces:
                            print(f"{where}: no face", file=out)
                        for i, f in enumerate(faces):
                            box = ",".join(str(round(v)) for v in f.box)
                            print(
                                f"{where}: face {i + 1} [{box}] {f.label} {f.score:.2f}", file=out
                            )
                    if csv_out is not None:
                        csv_out.write(frame.name, frame.index if kind == "video" else "", t, faces)
                    if annotator is not None:
                        annotator.write(draw_faces(frame.image, faces), frame.name)
                done = True
            finally:
                if annotator is not None:
                    annotator.close(done)
            for bad in source.unreadable:
                print(f"fer-edge predict: skipped unreadable image {bad}", file=sys.stderr)
    return n_frames, n_faces


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    n_frames, n_faces = predict(
        args.paths,
        model=args.model,
        backend=args.backend,
        detector=args.detector,
        tiles=args.tiles,
        no_detect=args.no_detect,
        threads=args.threads,
        json_lines=args.json,
        annotate=args.annotate,
        csv_path=args.csv,
        track=not args.no_track,
    )
    seconds = time.perf_counter() - t0  # model load included
    if not args.json:
        per = f", {1000 * seconds / n_frames:.1f} ms each" if n_frames else ""
        print(
            f"{n_faces} face(s) in {n_frames} image(s)/frame(s) in {seconds:.2f} s{per}",
            file=sys.stderr,
        )
    if args.annotate:
        print(f"annotated output written to {args.annotate}", file=sys.stderr)
    return 0

"""Emotions of the faces in an image, a folder of images or a video.

Prints one line per face (or, with --json, one JSON object per image or video frame). With
--no-detect every image is taken as one face crop, as in FER datasets. --annotate writes the
image (for one image), a folder of annotated images (for a folder) or an annotated video.

examples:
  fer-edge predict photo.jpg
  fer-edge predict photos/ --json > faces.jsonl
  fer-edge predict clip.mp4 --annotate clip_faces.mp4
  fer-edge predict fer2013/test/happy --no-detect --model my_bundle/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import cv2

from . import atomic
from .errors import InputError
from .stream import FrameSource, source_kind

# fourcc per video container that OpenCV's bundled FFmpeg writes
VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".avi": "MJPG", ".mkv": "mp4v", ".mov": "mp4v"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="an image, a folder of images, or a video file")
    p.add_argument("--model", default="default", help="model bundle folder, or 'default'")
    p.add_argument(
        "--backend", default="auto", choices=["auto", "tflite", "openvino", "onnxruntime"]
    )
    p.add_argument(
        "--detector",
        default="auto",
        choices=["auto", "blazeface", "blazeface_full", "haar"],
        help="face detector; auto: blazeface_full on 2x2 tiles, anti-aliased, for photos (finds small faces "
        "in group photos), blazeface (short-range, fastest) for videos",
    )
    p.add_argument(
        "--tiles", type=int, default=None, help="BlazeFace: n x n tiles (auto: see above)"
    )
    p.add_argument("--no-detect", action="store_true", help="treat each image as one face crop")
    p.add_argument(
        "--threads", type=int, default=None, help="inference threads (default: runtime's)"
    )
    p.add_argument("--json", action="store_true", help="JSON lines: one object per image/frame")
    p.add_argument("--annotate", metavar="OUT", help="write the annotated image, folder or video")
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
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=ext, dir=out.parent)
            os.close(fd)
            self._tmp = Path(tmp)
        elif kind == "image" and out.suffix.lower() not in {".png", ".jpg", ".jpeg", ".bmp"}:
            raise InputError("--annotate for an image needs a .png, .jpg or .bmp file name")

    def write(self, image, name: str) -> None:
        if self.kind == "video":
            if self._writer is None:
                h, w = image.shape[:2]
                fourcc = cv2.VideoWriter_fourcc(*VIDEO_CODECS[self.out.suffix.lower()])
                self._writer = cv2.VideoWriter(str(self._tmp), fourcc, self.fps, (w, h))
                if not self._writer.isOpened():
                    raise InputError(f"OpenCV cannot write the video {self.out}")
            self._writer.write(image)
            self._frames += 1
            return
        dest = self.out if self.kind == "image" else self.out / (Path(name).stem + ".png")
        ok, buf = cv2.imencode(dest.suffix or ".png", image)
        if not ok:
            raise InputError(f"cannot encode {dest}")
        atomic.write_bytes(dest, buf.tobytes())

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
                os.replace(self._tmp, self.out)
            else:
                self._tmp.unlink(missing_ok=True)


def _video_fps(path: Path) -> float:
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    cap.release()
    return fps if 1 <= fps <= 240 else 25.0


def _detector(args: argparse.Namespace, kind: str):
    from .detect import load_detector, load_photo_detector

    name, tiles = args.detector, args.tiles
    if name == "auto" and kind in ("image", "folder") and tiles is None:
        return load_photo_detector(args.threads)
    if name == "auto":
        name = "blazeface"
    if name == "haar":
        if tiles:
            raise InputError("--tiles applies to the BlazeFace detectors only")
        return load_detector(name)
    return load_detector(name, args.threads, tiles=tiles or 1)


def run(args: argparse.Namespace) -> int:
    from .draw import draw_faces
    from .recognizer import Recognizer
    from .stream import stream

    if args.threads is not None and args.threads < 1:
        raise InputError("--threads must be at least 1")
    kind = source_kind(args.path)
    if kind == "camera":
        raise InputError("predict reads files; for a camera use examples/webcam.py")
    rec = Recognizer(
        args.model,
        backend=args.backend,
        detector=None if args.no_detect else _detector(args, kind),
        num_threads=args.threads,
    )
    source = FrameSource(args.path)
    annotator = None
    if args.annotate:
        fps = _video_fps(Path(args.path)) if kind == "video" else 0.0
        annotator = _Annotator(Path(args.annotate), kind, fps)
    n_frames = n_faces = 0
    ok = False
    try:
        track = kind == "video" and not args.no_track
        for frame, faces in stream(rec, source, track=track):
            n_frames += 1
            n_faces += len(faces)
            if args.json:
                record = {"source": frame.name, "faces": [f.to_dict() for f in faces]}
                if kind == "video":
                    record["frame"] = frame.index
                print(json.dumps(record), flush=True)
            else:
                where = frame.name + (f" frame {frame.index}" if kind == "video" else "")
                if not faces:
                    print(f"{where}: no face")
                for i, f in enumerate(faces):
                    box = ",".join(str(round(v)) for v in f.box)
                    print(f"{where}: face {i + 1} [{box}] {f.label} {f.score:.2f}")
            if annotator is not None:
                annotator.write(draw_faces(frame.image, faces), frame.name)
        ok = True
    finally:
        if annotator is not None:
            annotator.close(ok)
    for path in source.unreadable:
        print(f"fer-edge predict: skipped unreadable image {path}", file=sys.stderr)
    if not args.json:
        print(f"{n_faces} face(s) in {n_frames} image(s)/frame(s)", file=sys.stderr)
    return 0

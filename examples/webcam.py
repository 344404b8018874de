"""Live facial expression recognition from a webcam, a video, an image or an image folder.

    python examples/webcam.py                      # camera 0, overlay window
    python examples/webcam.py --source clip.mp4 --headless   # JSON lines, no window
    python examples/webcam.py --model my_bundle/ --backend openvino

The overlay shows each face's box, label and probability bars, and the frame rate. Press q or
Esc to quit. Without a display (or with opencv-python-headless) it prints JSON lines instead.
A camera that cannot be opened is retried; when there is none, the sample photo in
examples/media/ is played instead, and the script says so.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2

from fer_edge import FerEdgeError, Recognizer
from fer_edge.detect import load_photo_detector
from fer_edge.draw import draw_faces
from fer_edge.stream import FrameSource, stream

SAMPLE = Path(__file__).resolve().parent / "media" / "solvay_conference.jpg"
WINDOW = "fer-edge"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--source", default="0", help="camera index, video file, image or folder")
    p.add_argument("--model", default="default", help="model bundle folder, or 'default'")
    p.add_argument(
        "--backend", default="auto", choices=["auto", "tflite", "openvino", "onnxruntime"]
    )
    p.add_argument(
        "--detector", default="auto", choices=["auto", "blazeface", "blazeface_full", "haar"]
    )
    p.add_argument("--threads", type=int, default=None, help="inference threads")
    p.add_argument("--headless", action="store_true", help="print JSON lines, open no window")
    p.add_argument("--reconnect", type=int, default=3, help="attempts to (re)open a camera")
    return p.parse_args()


def has_display() -> bool:
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
        return True
    except cv2.error:  # opencv-python-headless, or no X/Wayland display
        return False


def open_source(args: argparse.Namespace) -> FrameSource:
    try:
        src = FrameSource(args.source, reconnect=args.reconnect)
    except FerEdgeError as e:
        sys.exit(f"webcam: {e}")
    if src.kind != "camera":
        return src
    # Probe the camera now, so a machine without one falls back to the sample photo.
    cap = cv2.VideoCapture(src.source)
    ok = cap.isOpened() and cap.read()[0]
    cap.release()
    if ok:
        return src
    if not SAMPLE.is_file():
        sys.exit(f"webcam: camera {src.source} cannot be opened and {SAMPLE} is missing")
    print(
        f"webcam: no camera {src.source} found; playing the sample photo {SAMPLE.name} instead",
        file=sys.stderr,
    )
    return FrameSource(SAMPLE)


def main() -> int:
    args = parse_args()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # no capture-backend noise
    src = open_source(args)
    detector = args.detector
    try:
        if detector == "auto" and src.kind in ("image", "folder"):
            # Photos: the full-range model on 2x2 tiles finds the small faces of group photos.
            detector = load_photo_detector(args.threads)
        rec = Recognizer(
            args.model, backend=args.backend, detector=detector, num_threads=args.threads
        )
    except FerEdgeError as e:
        print(f"webcam: {e}", file=sys.stderr)
        return 2
    show = not args.headless and has_display()
    if not args.headless and not show:
        print("webcam: no display available; printing JSON lines instead", file=sys.stderr)
    fps, last = 0.0, time.perf_counter()
    try:
        for frame, faces in stream(rec, src):
            now = time.perf_counter()
            fps = 0.9 * fps + 0.1 / max(now - last, 1e-6) if fps else 1 / max(now - last, 1e-6)
            last = now
            if show:
                cv2.imshow(WINDOW, draw_faces(frame.image, faces, fps=fps))
                wait = 0 if src.kind in ("image", "folder") else 1
                if cv2.waitKey(wait) & 0xFF in (ord("q"), 27):
                    break
            else:
                record = {
                    "frame": frame.index,
                    "source": frame.name,
                    "fps": round(fps, 1),
                    "faces": [f.to_dict() for f in faces],
                }
                print(json.dumps(record), flush=True)
    except FerEdgeError as e:
        print(f"webcam: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        if show:
            cv2.destroyAllWindows()
    if src.dropped:
        print(
            f"webcam: dropped {src.dropped} camera frames while inference was busy", file=sys.stderr
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

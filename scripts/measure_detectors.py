"""Per-frame time and false faces of BlazeFace (on the best installed runtime) and Haar on a video
with one face: python scripts/measure_detectors.py [VIDEO]."""

import sys
import time

import cv2
import numpy as np

from fer_edge.detect import load_detector

cap = cv2.VideoCapture(
    sys.argv[1] if len(sys.argv) > 1 else "../shared/data/media/talking_short.mp4"
)
frames = []
while True:
    ok, f = cap.read()
    if not ok:
        break
    frames.append(f)
for name in ("blazeface", "haar"):
    d = load_detector(name, 1)
    d(frames[0])
    ts, found, false = [], 0, 0
    for f in frames:
        t = time.perf_counter()
        dets = d(f)
        ts.append((time.perf_counter() - t) * 1000)
        found += len(dets) >= 1
        false += len(dets) > 1
    g = getattr(d, "graph", None)
    print(
        f"{name} ({type(g).__name__ if g else 'OpenCV'}): {len(frames)} frames, with the face {found}, with a false face {false}, ms per frame min {min(ts):.1f} p50 {np.median(ts):.1f}"
    )

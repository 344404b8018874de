"""Soak test of the stream pipeline: a real video played as a live camera, in a loop, for as long
as asked (30 minutes by default), through ``fer_edge.stream`` with tracking, as a kiosk runs it
(the loop of ``fer_edge.stream.stream``, with the Recognizer call timed on its own).

The video is paced at its own frame rate through the camera path of ``FrameSource`` (newest
frame kept, older ones dropped when inference falls behind), so the run exercises the capture
thread, the drop logic and the tracker as a webcam would. Every ``--interval`` seconds it
samples the process's resident memory (RSS), frames processed per second, frames dropped, and
the per-frame latency of the Recognizer call. Prints one JSON object: the samples, the RSS
slope after warm-up (least-squares, MB per hour) and growth, and FPS and latency of the first
and last fifth of the run; ``--plot`` draws them.

    python scripts/soak.py --minutes 30 --out runs/soak.json --plot docs/img/soak.png
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from fer_edge import Recognizer, atomic
from fer_edge.plots import pyplot, save
from fer_edge.stream import FrameSource

DEFAULT_VIDEO = (
    Path(__file__).resolve().parent.parent.parent / "shared/data/media/talking_woman.mp4"
)


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class LoopingVideoCamera:
    """A camera made of a video file: frames at the video's own rate, rewound at the end."""

    def __init__(self, path: Path, pace: bool):
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            raise SystemExit(f"soak: OpenCV cannot open {path}")
        fps = self.cap.get(cv2.CAP_PROP_FPS) or 25.0
        self.period = 1.0 / fps if pace else 0.0
        self.next_time = time.monotonic()
        self.loops = 0

    def __call__(self, index: int) -> LoopingVideoCamera:  # the capture_factory interface
        return self

    def isOpened(self) -> bool:
        return self.cap.isOpened()

    def read(self):
        delay = self.next_time - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self.next_time = max(self.next_time + self.period, time.monotonic() - self.period)
        ok, frame = self.cap.read()
        if not ok:  # end of the file: start again, as a camera never ends
            self.loops += 1
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.cap.read()
        return ok, frame

    def release(self) -> None:
        pass  # the stream never closes the camera during a soak; close() does at the end

    def close(self) -> None:
        self.cap.release()


def summarise(samples: list[dict], warmup_s: float) -> dict:
    t = np.array([s["t"] for s in samples])
    rss = np.array([s["rss_mb"] for s in samples])
    fps = np.array([s["fps"] for s in samples])
    lat = np.array([s["latency_ms_p50"] for s in samples])
    steady = t >= min(warmup_s, t[-1] / 2)
    slope = float(np.polyfit(t[steady] / 3600, rss[steady], 1)[0]) if steady.sum() > 2 else 0.0
    fifth = max(1, len(samples) // 5)
    return {
        "duration_s": float(t[-1]),
        "rss_mb_start": float(rss[steady][0]),
        "rss_mb_end": float(rss[-1]),
        "rss_growth_mb": float(rss[-1] - rss[steady][0]),
        "rss_slope_mb_per_hour": slope,
        "rss_mb_max": float(rss.max()),
        "fps_first_fifth": float(fps[:fifth].mean()),
        "fps_last_fifth": float(fps[-fifth:].mean()),
        "latency_ms_p50_first_fifth": float(np.median(lat[:fifth])),
        "latency_ms_p50_last_fifth": float(np.median(lat[-fifth:])),
    }


def plot(samples: list[dict], path: Path) -> None:
    plt = pyplot()

    t = np.array([s["t"] for s in samples]) / 60
    fig, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
    for ax, key, label in zip(
        axes,
        ("rss_mb", "fps", "latency_ms_p50"),
        ("RSS (MB)", "frames/s", "latency p50 (ms)"),
        strict=True,
    ):
        ax.plot(t, [s[key] for s in samples])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title("stream soak: one looping video through Recognizer + tracking")
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save(fig, path, fmt=path.suffix.lstrip(".") or "png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="video played as the camera")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before the RSS baseline")
    p.add_argument("--model", default="default")
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-pace", action="store_true", help="read frames as fast as possible")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--plot", type=Path, help="PNG of RSS, FPS and latency over time")
    a = p.parse_args(argv)

    rec = Recognizer(a.model, backend=a.backend, detector="blazeface", num_threads=a.threads)
    camera = LoopingVideoCamera(a.video, pace=not a.no_pace)
    source = FrameSource(0, drop=True, capture_factory=camera)
    samples: list[dict] = []
    latencies: list[float] = []
    frames = faces = 0
    t0 = last = time.monotonic()
    last_frames, last_dropped = 0, 0
    end = t0 + 60 * a.minutes
    # What fer_edge.stream.stream does, with the Recognizer call timed on its own.
    with rec.stream_session() as session, source:
        for frame in source:
            t_call = time.perf_counter()
            found = session(frame.image)
            latencies.append(1000 * (time.perf_counter() - t_call))
            frames += 1
            faces += len(found)
            now = time.monotonic()
            if now - last >= a.interval:
                samples.append(
                    {
                        "t": round(now - t0, 2),
                        "rss_mb": round(rss_mb(), 2),
                        "fps": round((frames - last_frames) / (now - last), 2),
                        "dropped": source.dropped - last_dropped,
                        "latency_ms_p50": round(float(np.median(latencies)), 3),
                        "latency_ms_p95": round(float(np.percentile(latencies, 95)), 3),
                    }
                )
                print(json.dumps(samples[-1]), file=sys.stderr, flush=True)
                last, last_frames, last_dropped, latencies = now, frames, source.dropped, []
            if now >= end:
                break
    camera.close()
    run_s = time.monotonic() - t0
    report = {
        "video": str(a.video),
        "model": rec.bundle.name,
        "backend": rec.runtime.name,
        "threads": a.threads,
        "paced": not a.no_pace,
        "run_s": round(run_s, 1),
        "frames": frames,
        "faces": faces,
        "dropped": source.dropped,
        "video_loops": camera.loops,
        "reconnects": source.reconnects,
        "stalls": source.stalls,
        **summarise(samples, a.warmup),
        "samples": samples,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if a.out:
        atomic.write_text(a.out, text + "\n")
    if a.plot:
        plot(samples, a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

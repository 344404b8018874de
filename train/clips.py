"""Clip datasets for the temporal strategies (TimeAug, HardNeg), in the layout
:func:`fer_edge.data.load_dataset` reads: ``root/clips.csv`` (``clip,identity``) and one folder
of ordered frames per clip.

Two sources, since this project has no clip dataset: clips synthesised from still faces, and
face crops cut from a real video (one detector pass, the largest face per frame).

A synthesised clip shows one still's face (its identity) changing expression: it cross-fades
between two face swaps (:mod:`.faceswap`) of other stills' inner faces onto it, under smooth small
head motion and lighting drift. So nearby frames share an expression and distant frames of the
same person differ in expression, which is what TimeAug and HardNeg assume of real video. Without
landmarks the still itself is both ends (motion and lighting only).

    python -m fer_edge.train.clips synth --data /data/fer2013 --count 200 --out clips_synth
    python -m fer_edge.train.clips video --video a.mp4 b.mp4 --identity ann bob --out clips_video
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import cv2
import numpy as np

from fer_edge import atomic
from fer_edge.errors import InputError

ROTATE = 6.0  # degrees, peak of the synthesised head roll
SHIFT = 0.04  # peak translation, fraction of the side
ZOOM = 0.04  # peak relative scale change
LIGHT = 20.0  # peak brightness offset (grey levels)


def synthesize_clip(
    start: np.ndarray, end: np.ndarray, frames: int, rng: np.random.Generator
) -> np.ndarray:
    """Two uint8 (H, W, C) faces -> (frames, H, W, C): a cross-fade from ``start`` to ``end``
    under a slow random sinusoid (under one period over the clip) for each of roll, shift, zoom
    and brightness, so neighbouring frames differ little and distant ones more."""
    h, w = start.shape[:2]
    t = np.linspace(0, 1, frames)[:, None]
    freq, phase = rng.uniform(0.3, 0.9, 5), rng.uniform(0, 2 * np.pi, 5)
    wave = np.sin(2 * np.pi * freq * t + phase)  # (frames, 5)
    out = np.empty((frames, *start.shape), np.uint8)
    for k, (roll, dx, dy, zoom, light) in enumerate(wave):
        mix = (1 - t[k, 0]) * start.astype(np.float32) + t[k, 0] * end.astype(np.float32)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), ROTATE * roll, 1 + ZOOM * zoom)
        m[:, 2] += (SHIFT * w * dx, SHIFT * h * dy)
        img = cv2.warpAffine(mix, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
        out[k] = np.clip(img.reshape(start.shape) + LIGHT * light, 0, 255).astype(np.uint8)
    return out


def write_clip_tree(root: Path, clips: list[np.ndarray], identities: list[str]) -> Path:
    """Write clips (each (T, H, W[, C]) uint8) as ``root/<clip>/<frame>.png`` plus
    ``root/clips.csv``; returns ``root``."""
    if len(clips) != len(identities):
        raise InputError(f"{len(clips)} clips but {len(identities)} identities")
    listing = io.StringIO()
    writer = csv.writer(listing, lineterminator="\n")
    writer.writerow(["clip", "identity"])
    for c, (frames, person) in enumerate(zip(clips, identities, strict=True)):
        name = f"clip{c:05d}"
        for f, img in enumerate(frames):
            ok, png = cv2.imencode(".png", img)
            if not ok:
                raise InputError(f"could not encode frame {f} of clip {c}")
            atomic.write_bytes(root / name / f"{f:05d}.png", png.tobytes())
        writer.writerow([name, person])
    atomic.write_text(root / "clips.csv", listing.getvalue())
    return root


def synthesize_tree(
    root: Path, stills: np.ndarray, frames: int, points: np.ndarray | None = None, seed: int = 0
) -> Path:
    """One synthesised clip per still (identity = the still's number); with landmarks
    ``points`` the clip changes expression between two other stills' (seeded)."""
    from .faceswap import swap_face, swap_pairs

    rng = np.random.default_rng(seed)
    clips = []
    if points is None:
        clips = [synthesize_clip(s, s, frames, rng) for s in stills]
    else:
        first, second = swap_pairs(len(stills), seed), swap_pairs(len(stills), seed + 1)
        for j, still in enumerate(stills):
            a, b = (
                swap_face(stills[i], points[i], still, points[j])[0] for i in (first[j], second[j])
            )
            clips.append(synthesize_clip(a, b, frames, rng))
    return write_clip_tree(root, clips, [f"still{i}" for i in range(len(stills))])


def video_crops(video: Path, side: int = 96, every: int = 1) -> tuple[list[np.ndarray], int]:
    """Largest-face crops (side x side BGR) of every ``every``-th frame of ``video``; frames
    without a face are left out. Returns (crops, frames read)."""
    from fer_edge.align import align_face
    from fer_edge.detect import load_detector
    from fer_edge.preprocess import PreprocessSpec

    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise InputError(f"cannot open video {video}")
    detector, spec = load_detector("auto", num_threads=1), PreprocessSpec(size=side, channels=3)
    crops, n = [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n += 1
        if (n - 1) % every:
            continue
        faces = detector(frame)
        if faces:
            crops.append(align_face(frame, max(faces, key=lambda d: d.width * d.height), spec))
    cap.release()
    return crops, n


def video_tree(
    videos: list[tuple[Path, str]], root: Path, clip_frames: int, every: int = 1
) -> dict[str, tuple[int, int]]:
    """One clip tree from (video, identity) pairs: each video's face crops cut into clips of
    ``clip_frames``. Returns identity -> (frames read, crops kept)."""
    clips, people, counts = [], [], {}
    for video, identity in videos:
        crops, n = video_crops(video, every=every)
        counts[identity] = (n, len(crops))
        for i in range(0, len(crops), clip_frames):
            clips.append(np.stack(crops[i : i + clip_frames]))
            people.append(identity)
    write_clip_tree(root, clips, people)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fer_edge.train.clips", description=__doc__)
    sub = p.add_subparsers(dest="source", required=True)
    s = sub.add_parser("synth", help="clips synthesised from still faces")
    s.add_argument("--data", required=True, help="faces (any layout fer-edge reads)")
    s.add_argument("--split", default="train")
    s.add_argument("--count", type=int, default=200, help="stills to use (one clip each)")
    s.add_argument("--frames", type=int, default=16, help="frames per clip")
    s.add_argument("--size", type=int, default=48)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    v = sub.add_parser("video", help="face crops cut from a video")
    v.add_argument("--video", nargs="+", required=True)
    v.add_argument("--identity", nargs="+", required=True, help="the person in each video")
    v.add_argument("--clip-frames", type=int, default=64, help="crops per clip")
    v.add_argument("--every", type=int, default=1, help="keep every N-th frame")
    v.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.source == "synth":
        from fer_edge.data import load_dataset
        from fer_edge.preprocess import PreprocessSpec

        data = Path(args.data)
        split = args.split if (data / args.split).is_dir() else None
        faces = load_dataset(data, split, spec=PreprocessSpec(size=args.size, channels=1))
        from .landmarks import dataset_landmarks

        pick = np.sort(np.random.default_rng(args.seed).permutation(len(faces))[: args.count])
        stills = faces.images[pick]
        synthesize_tree(Path(args.out), stills, args.frames, dataset_landmarks(stills), args.seed)
        print(f"{len(pick)} clips of {args.frames} frames -> {args.out}", file=sys.stderr)
    else:
        if len(args.video) != len(args.identity):
            p.error("give one --identity per --video")
        pairs = list(zip(map(Path, args.video), args.identity, strict=True))
        counts = video_tree(pairs, Path(args.out), args.clip_frames, args.every)
        for who, (n, kept) in counts.items():
            print(f"{who}: {kept} face crops of {n} frames -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

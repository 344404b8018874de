"""Write a valence/arousal label list over real faces with synthetic targets.

FER-2013 has no valence/arousal labels, so ``fer-edge train --method avce`` is exercised on
targets that are a fixed, learnable function of each face: a per-class point of the circumplex
(Russell's valence/arousal placement of the basic emotions, roughly) plus a term from the image:
valence moves with the face's mean brightness, arousal with the brightness of its upper half
against its lower half (unchanged by horizontal flips). A model that reaches a high CCC on these
has learnt the image terms and some of the class; it says nothing about real affect, for which a
valence/arousal dataset (AffectNet, AFEW-VA) is needed.

    python scripts/synthetic_va.py --data ../shared/data/fer2013/train --per-class 40 --out train.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from fer_edge import atomic
from fer_edge.data import load_dataset
from fer_edge.preprocess import PreprocessSpec

# (valence, arousal) per class
PROTOTYPES = {
    "angry": (-0.5, 0.6),
    "disgust": (-0.6, 0.3),
    "fear": (-0.4, 0.7),
    "happy": (0.8, 0.4),
    "neutral": (0.0, -0.2),
    "sad": (-0.6, -0.4),
    "surprise": (0.3, 0.8),
}
CLASS_SHARE = 0.5  # of each target from the class prototype; the rest from the image


def synthetic_targets(images: np.ndarray, labels: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """(N, 2) valence/arousal in [-1, 1] for uint8 (N, S, S, C) faces of classes ``labels``."""
    gray = images.astype(np.float32).mean(axis=3)
    half = gray.shape[1] // 2
    brightness = (gray.mean(axis=(1, 2)) - 128) / 40
    top_vs_bottom = (gray[:, :half].mean(axis=(1, 2)) - gray[:, half:].mean(axis=(1, 2))) / 25
    proto = np.array([PROTOTYPES[names[y]] for y in labels], np.float32)
    image = np.tanh(np.stack([brightness, top_vs_bottom], axis=1))
    return np.clip(CLASS_SHARE * proto + (1 - CLASS_SHARE) * image, -1, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="class-folder root of face images")
    p.add_argument("--out", required=True, help="label list CSV to write")
    p.add_argument("--per-class", type=int, help="at most this many faces per class")
    p.add_argument(
        "--missing", type=float, default=0.0, help="leave valence/arousal empty on this fraction"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    ds = load_dataset(args.data, spec=PreprocessSpec(size=48, channels=1))
    if args.per_class:
        keep = [
            np.flatnonzero(ds.labels == c)[: args.per_class] for c in range(len(ds.label_names))
        ]
        ds = ds.subset(np.sort(np.concatenate(keep)))
    va = synthetic_targets(ds.images, ds.labels, ds.label_names)
    rng = np.random.default_rng(args.seed)
    missing = rng.random(len(ds)) < args.missing
    rows = [["path", "label", "valence", "arousal"]]
    for path, y, (v, a), gone in zip(ds.paths, ds.labels, va, missing, strict=True):
        cells = ["", ""] if gone else [f"{v:.4f}", f"{a:.4f}"]
        rows.append([str(Path(path).resolve()), ds.label_names[y], *cells])
    with atomic.atomic_path(args.out) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    print(
        f"{len(ds)} faces, {int(missing.sum())} without valence/arousal -> {args.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Clean-test accuracy under injected symmetric label noise: plain cross-entropy vs MIM-SPL.

Trains every (noise, method) pair of the grid with ``fer-edge train --label-noise NOISE --method
METHOD`` (same arch, size, epochs, seed and training faces), scores each run's best-on-val bundle
on the untouched test split with ``fer-edge eval --json``, and prints one JSON object, with the
clean/noisy split's precision and recall per epoch for the mim-spl runs. A method may carry its
own settings, for ablations: ``mim-spl:relabel=drop`` or ``mim-spl:mim_weight=0,dcl_weight=0``.
Runs are resumed, not repeated, when the script is started again with the same --out.

    python scripts/noisy_labels.py --data ../shared/data/fer2013 --out runs/noisy_labels \\
        --epochs 10 --limit-per-class 800 --jobs 2
    # the ablation grid: each part of mim-spl removed
    python scripts/noisy_labels.py --data ../shared/data/fer2013 --out runs/mim_ablation \\
        --epochs 30 --methods ce mim-spl mim-spl:relabel=model mim-spl:relabel=drop \\
        mim-spl:relabel=keep mim-spl:mim_weight=0 mim-spl:dcl_weight=0 mim-spl:warmup=31
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="split root with train/, val/ and test/")
    p.add_argument("--out", default="runs/noisy_labels", help="one run folder per grid cell here")
    p.add_argument("--noise", nargs="+", type=float, default=[0.2, 0.4])
    p.add_argument("--methods", nargs="+", default=["mim-spl", "ce"])
    p.add_argument("--arch", default="vgg_small")
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--limit-per-class", type=int, default=800)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at the same time")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="mim-spl setting"
    )
    return p.parse_args()


def fer_edge(*argv: str) -> str:
    done = subprocess.run([sys.executable, "-m", "fer_edge", *argv], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"fer-edge {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


# the clean/noisy split's diagnostics that mim-spl logs each epoch
SPLIT_KEYS = ("clean_fraction", "clean_precision", "clean_recall", "relabel_accuracy")


def parse_method(entry: str) -> tuple[str, list[str], str]:
    """``METHOD[:KEY=VALUE,...]`` -> (method, its --set KEY=VALUE list, run folder name)."""
    method, _, options = entry.partition(":")
    settings = [kv for kv in options.split(",") if kv]
    if any("=" not in kv for kv in settings):
        raise SystemExit(f"error: {entry!r} is not METHOD[:KEY=VALUE,...]")
    if settings and method != "mim-spl":
        raise SystemExit(f"error: {entry!r}: only mim-spl takes settings here")
    name = "_".join([method, *(kv.replace("=", "-") for kv in settings)])
    return method, settings, name


def cell(args: argparse.Namespace, noise: float, entry: str) -> dict:
    method, own_settings, name = parse_method(entry)
    out = Path(args.out) / f"{name}_noise{noise:g}"
    train = [
        "train", "--data", args.data, "--method", method, "--label-noise", str(noise),
        "--arch", args.arch, "--size", str(args.size), "--epochs", str(args.epochs),
        "--limit-per-class", str(args.limit_per_class), "--seed", str(args.seed),
        "--threads", str(args.threads), "--out", str(out), "--resume", "--no-progress",
    ]  # fmt: skip
    if method == "mim-spl":
        train += [a for kv in [*args.set, *own_settings] for a in ("--set", kv)]
    t0 = time.time()
    fer_edge(*train)
    seconds = time.time() - t0
    report = json.loads(
        fer_edge(
            "eval",
            "--model",
            str(out / "best"),
            "--data",
            args.data,
            "--split",
            "test",
            "--threads",
            str(args.threads),
            "--json",
        )  # fmt: skip
    )
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = max(history, key=lambda h: h["val_accuracy"])
    diagnostics = {k: history[-1][k] for k in SPLIT_KEYS if k in history[-1]}
    return {
        "noise": noise,
        "method": entry,
        "run": str(out),
        "test_accuracy": report["accuracy"],
        "test_macro_f1": report["macro_f1"],
        "test_n": report["n"],
        "best_epoch": best["epoch"],
        "val_accuracy": best["val_accuracy"],
        "loss_per_epoch": [round(h["loss"], 4) for h in history],
        "last_epoch_split": diagnostics,
        "split_per_epoch": [
            {"epoch": h["epoch"], **{k: round(h[k], 4) for k in SPLIT_KEYS if k in h}}
            for h in history
            if "clean_precision" in h
        ],
        "train_seconds": round(seconds, 1),
    }


def main() -> int:
    args = parse_args()
    for entry in args.methods:
        parse_method(entry)  # refuse a malformed entry before hours of training
    grid = [(noise, method) for method in args.methods for noise in args.noise]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(lambda nm: cell(args, *nm), grid))
    settings = {
        k: getattr(args, k)
        for k in ("data", "arch", "size", "epochs", "limit_per_class", "seed", "set")
    }
    print(json.dumps({"settings": settings, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

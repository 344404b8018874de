"""Kill `fer-edge train` with SIGKILL at random moments and check every resume.

For each trial: start a run, SIGKILL it after a random delay, resume it (repeatedly, if the
random kill lands again), and compare with one uninterrupted reference run: the epoch history
must be complete and in order (no lost or repeated epoch), every checkpoint must load, and the
final weights must be bit-identical. Prints one JSON object.

    python scripts/kill_resume_trials.py --trials 10 --data ../shared/data/fer2013
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fer_edge.train.checkpoint import load_checkpoint

ARGS = [
    "--arch",
    "vgg_small",
    "--batch-size",
    "32",
    "--lr",
    "0.02",
    "--threads",
    "1",
    "--no-progress",
]


def small_copy(src: Path, dest: Path, per_class: dict[str, int]) -> Path:
    for split, n in per_class.items():
        for cls in sorted((src / split).iterdir()):
            out = dest / split / cls.name
            out.mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                shutil.copyfile(f, out / f.name)
    return dest


def train_command(data: Path, out: Path, epochs: int, options: list[str] = ARGS) -> list[str]:
    """A `fer-edge train` run in a fresh process, small and fast with the default ``options``
    (also used by the kill-and-resume tests)."""
    return [
        sys.executable, "-m", "fer_edge", "train", "--data", str(data), "--epochs", str(epochs),
        "--out", str(out), *options,
    ]  # fmt: skip


def train(data: Path, out: Path, epochs: int, resume: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        train_command(data, out, epochs) + (["--resume"] if resume else []),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013")
    )
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rnd = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="fer-kill-"))
    try:
        data = small_copy(Path(args.data), work / "data", {"train": 40, "val": 15})
        t0 = time.time()
        ref = train(data, work / "ref", args.epochs)
        if ref.wait() != 0:
            raise SystemExit(f"reference run failed: {ref.stderr.read().decode()[-500:]}")
        run_seconds = time.time() - t0
        reference = load_checkpoint(work / "ref" / "last.pt")["model"]
        trials = []
        for i in range(args.trials):
            out = work / f"trial{i}"
            kills, resume = [], False
            while True:
                proc = train(data, out, args.epochs, resume)
                delay = rnd.uniform(0.3, run_seconds)
                try:
                    rc = proc.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    done = (
                        len((out / "metrics.jsonl").read_text().splitlines())
                        if (out / "metrics.jsonl").exists()
                        else 0
                    )
                    kills.append({"after_s": round(delay, 2), "epochs_done": done})
                    if (out / "last.pt").exists():
                        load_checkpoint(out / "last.pt")  # never half-written
                    resume = True
                    continue
                if rc != 0:
                    raise SystemExit(f"trial {i}: run failed: {proc.stderr.read().decode()[-500:]}")
                break
            history = [
                json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()
            ]
            final = load_checkpoint(out / "last.pt")["model"]
            identical = all(torch.equal(final[k], reference[k]) for k in reference)
            trials.append(
                {
                    "trial": i,
                    "kills": kills,
                    "epochs_logged": history,
                    "history_complete": history == list(range(1, args.epochs + 1)),
                    "weights_identical": identical,
                    "stray_temp_files": sorted(f.name for f in out.glob(".*.tmp")),
                }
            )
        report = {
            "trials": len(trials),
            "kills": sum(len(t["kills"]) for t in trials),
            "all_histories_complete": all(t["history_complete"] for t in trials),
            "all_weights_identical": all(t["weights_identical"] for t in trials),
            "trials_with_stray_temp_files": sum(bool(t["stray_temp_files"]) for t in trials),
            "detail": trials,
        }
        print(json.dumps(report, indent=1))
        return 0 if report["all_histories_complete"] and report["all_weights_identical"] else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Training in a fresh process for the kill-and-resume tests: the command comes from
scripts/kill_resume_trials.py (the same small run its trials use), and a helper SIGKILLs a run
once it has logged an epoch."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "kill_resume_trials", REPO / "scripts" / "kill_resume_trials.py"
)
kill_resume_trials = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kill_resume_trials)
SMALL_RUN = kill_resume_trials.ARGS
train_command = kill_resume_trials.train_command


def logged_epochs(run: Path) -> list[dict]:
    """The epoch records of ``run``'s metrics.jsonl ([] before the first)."""
    path = run / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def kill_after_first_epoch(cmd: list[str], run: Path, timeout: float = 120) -> int:
    """Start ``cmd`` (a training run writing to ``run``), SIGKILL it as soon as it has logged an
    epoch, and return how many epochs it had logged by then."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not logged_epochs(run) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(logged_epochs(run))


def command_options(command: str, argv: list[str]) -> dict:
    """The keyword arguments ``fer-edge COMMAND ARGV`` passes to its library function."""
    import argparse
    import importlib

    from fer_edge.commands.options import keyword_arguments

    parser = argparse.ArgumentParser()
    importlib.import_module(f"fer_edge.commands.{command}").add_arguments(parser)
    return keyword_arguments(parser.parse_args(argv))


def save_untrained_checkpoint(path: Path, arch: str = "vgg_small") -> Path:
    """A seeded, untrained FER-2013 model checkpoint at ``path``: a teacher for compression
    tests, which need one that loads, not one that knows faces."""
    import torch

    from fer_edge.labels import FER_LABELS
    from fer_edge.preprocess import PreprocessSpec
    from fer_edge.train.checkpoint import save_checkpoint
    from fer_edge.train.nets import build

    torch.manual_seed(0)
    save_checkpoint(
        path,
        {
            "model": build(arch).state_dict(),
            "arch": arch,
            "num_classes": len(FER_LABELS),
            "in_channels": 1,
            "labels": list(FER_LABELS),
            "preprocess": PreprocessSpec().to_dict(),
        },
    )
    return path

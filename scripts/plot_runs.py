"""Compare training runs in one figure: one panel per ``--panel``, one line per run, a metric from
each run folder's ``metrics.jsonl`` against the epoch (``LABEL=RUN_DIR:METRIC`` plots another
metric for that run, e.g. MoCo's ``loss`` beside HNCL's ``loss_own``).

    python scripts/plot_runs.py --out curves.png \\
        --panel "pretraining loss" loss hncl=runs/hncl/cpu moco=runs/hncl/moco_cpu \\
        --panel "val accuracy" val_accuracy ce=runs/ce mim-spl=runs/mim_spl
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from fer_edge.errors import InputError
from fer_edge.plots import pyplot, save
from fer_edge.train.engine import read_history


def parse_panel(items: list[str]) -> tuple[str, str, list[tuple[str, Path, str]]]:
    """``TITLE METRIC LABEL=RUN_DIR[:METRIC] ...`` -> (title, metric, [(label, folder, metric)])."""
    if len(items) < 3:
        raise InputError(f"--panel wants TITLE METRIC LABEL=RUN_DIR..., got {items}")
    title, metric, runs = items[0], items[1], []
    for item in items[2:]:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            raise InputError(f"--panel run {item!r} is not LABEL=RUN_DIR")
        folder, _, own = folder.partition(":")
        runs.append((label, Path(folder), own or metric))
    return title, metric, runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument(
        "--panel",
        nargs="+",
        action="append",
        required=True,
        metavar="ARG",
        help="TITLE METRIC LABEL=RUN_DIR [LABEL=RUN_DIR ...] (repeatable)",
    )
    p.add_argument("--columns", type=int, default=3, help="panels per row")
    args = p.parse_args(argv)
    try:
        panels = [parse_panel(items) for items in args.panel]
        for _, _, runs in panels:
            for label, folder, metric in runs:
                history = read_history(folder)
                if not any(metric in h for h in history):
                    raise InputError(f"{folder} ({label}) logs no {metric!r} per epoch")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    plt = pyplot()
    cols = min(args.columns, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (title, metric, runs) in zip(axes.flat, panels, strict=False):
        for label, folder, own in runs:
            history = [h for h in read_history(folder) if own in h]
            ax.plot([h["epoch"] for h in history], [h[own] for h in history], ".-", label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

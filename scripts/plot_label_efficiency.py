"""Label-efficiency plot from ``fer-edge probe`` results: test accuracy against the fraction of
training labels, one line per encoder and protocol. An encoder's rows may come from several probe
folders (e.g. 1% and 10% fine-tuning in one run, 100% in another): repeat its label. ``--json``
also writes the table, one row per method, protocol and label fraction (``method``, ``protocol``,
``fraction``, ``test_accuracy``, ``val_accuracy``, ``epochs`` of pretraining, the probe
``command``), so anyone can check and re-plot it.

    python scripts/plot_label_efficiency.py --out label_efficiency.png \\
        --json docs/results/ssl_label_efficiency.json \\
        FRA=runs/probe_fra FRA=runs/probe_fra_ft100 scratch=runs/probe_random
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from fer_edge.data import write_json
from fer_edge.errors import InputError
from fer_edge.plots import pyplot, save

MARKERS = {"finetune": "o-", "linear": "s--", "knn": "^:"}


def read_table(items: list[str]) -> list[dict]:
    """``LABEL=PROBE_DIR ...`` -> one row per (label, protocol, fraction), later folders
    replacing earlier ones' rows of the same key."""
    table: dict[tuple[str, str, float], dict] = {}
    for item in items:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            raise InputError(f"{item!r} is not LABEL=PROBE_DIR")
        path = Path(folder) / "results.json"
        try:
            results = json.loads(path.read_text())
            rows = results["rows"]
            for row in rows:
                key = (label, row["protocol"], float(row["fraction"]))
                table[key] = {
                    "method": label,
                    "protocol": row["protocol"],
                    "fraction": float(row["fraction"]),
                    "test_accuracy": row["test_accuracy"],
                    "val_accuracy": row.get("val_accuracy"),
                    "epochs": results.get("pretrain_epochs"),
                    "command": results.get("command"),
                }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{path} is not a fer-edge probe result ({e})") from None
        if not rows:
            raise InputError(f"{path} has no result rows: nothing to plot")
    return list(table.values())


def read_rows(items: list[str]) -> dict[tuple[str, str], dict[float, float]]:
    """``LABEL=PROBE_DIR ...`` -> {(label, protocol): {fraction: test accuracy}}."""
    lines: dict[tuple[str, str], dict[float, float]] = defaultdict(dict)
    for row in read_table(items):
        lines[(row["method"], row["protocol"])][row["fraction"]] = row["test_accuracy"]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--title", default="label efficiency", help="figure title")
    p.add_argument("--json", help="also write the table of every row here")
    p.add_argument("runs", nargs="+", metavar="LABEL=PROBE_DIR", help="probe output folders")
    args = p.parse_args(argv)
    try:
        lines = read_rows(args.runs)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        write_json(Path(args.json), {"rows": read_table(args.runs)})

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    fractions = sorted({f for points in lines.values() for f in points})
    # one colour per encoder, one line style per protocol
    colours = {label: f"C{i}" for i, label in enumerate(dict.fromkeys(k[0] for k in lines))}
    for (label, protocol), points in sorted(lines.items(), key=lambda kv: kv[0][::-1]):
        xs = sorted(points)
        ys = [100 * points[x] for x in xs]
        style = MARKERS.get(protocol, ".-")
        ax.plot(xs, ys, style, color=colours[label], label=f"{label} {protocol}")
    ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{100 * f:g}%" for f in fractions])
    ax.set_xlabel("training labels used")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(args.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Structured channel pruning with torch-pruning (DepGraph), iterative prune + fine-tune.

Channels are removed in ``--steps`` equal steps, one at the start of each of the first
``--steps`` epochs, until ``--ratio`` of every prunable layer's channels are gone (L2 magnitude
importance; the classifier head keeps its outputs); the remaining epochs only fine-tune. DepGraph
keeps coupled layers (residual adds, depthwise convs, squeeze-excitation) consistent. The
checkpoint records the narrowed structure, so ``--resume`` and every loader rebuild the pruned
network. Writes OUT/bundle with MACs and parameters before and after. From Python:
``fer_edge.compress.prune.prune(model=..., data=..., ratio=...)``.
"""

from __future__ import annotations

import argparse

from fer_edge.compress import prune

from .options import add_finetune_arguments, keyword_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="float checkpoint, pytorch bundle or 'default'")
    p.add_argument(
        "--ratio", type=float, default=0.5, help="fraction of channels to remove per layer"
    )
    p.add_argument(
        "--steps", type=int, default=4, help="pruning steps (one per epoch, then fine-tuning only)"
    )
    p.add_argument("--round-to", type=int, default=4, help="keep channel counts multiples of this")
    add_finetune_arguments(p, epochs=8, lr=1e-3, out="runs/prune")


def run(args: argparse.Namespace) -> int:
    prune.prune(**keyword_arguments(args))
    return 0

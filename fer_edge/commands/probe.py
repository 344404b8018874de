"""Label-efficiency evaluation of a face encoder: linear probe and k-NN on frozen features, and
fine-tuning, each with 1%, 10% and 100% of the training labels.

Label subsets are class-stratified with a fixed seed (``fer_edge.data.stratified_subset``, the
same subset ``fer-edge train --label-fraction`` uses). Hyperparameters are chosen on the val split
(the linear probe's C; fine-tuning's epoch) and the test split is scored once with that choice.
Writes OUT/results.json and OUT/results.md (a markdown table); fine-tuning runs go to
OUT/finetune_<fraction>/ and are resumed, not repeated, when probe runs again.

The encoder is a ``fer-edge pretrain`` checkpoint, a ``fer-edge train`` checkpoint or pytorch
bundle, or (``--random``) a randomly initialised network as the baseline; fine-tuning from
``--random`` is supervised training from scratch. From Python:
``fer_edge.train.probe.probe(data=..., init=...)``.
"""

from __future__ import annotations

import argparse

from fer_edge.train import probe
from fer_edge.train.nets import ARCHS

from .options import add_run_arguments, keyword_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--init", help="encoder: fer-edge pretrain/train checkpoint (.pt) or pytorch bundle"
    )
    src.add_argument(
        "--random", action="store_true", help="baseline: a randomly initialised --arch encoder"
    )
    p.add_argument("--arch", default="vgg", choices=sorted(ARCHS), help="architecture for --random")
    p.add_argument("--size", type=int, default=48, help="input side for --random")
    p.add_argument("--channels", type=int, default=1, choices=(1, 3), help="channels for --random")
    p.add_argument("--data", required=True, help="split root with train/, val/ and test/")
    p.add_argument("--protocols", nargs="+", default=["linear", "knn"], choices=probe.PROTOCOLS)
    p.add_argument(
        "--fractions",
        nargs="+",
        type=float,
        default=[0.01, 0.1, 1.0],
        help="fractions of the training labels",
    )
    p.add_argument("--k", type=int, default=20, help="neighbours for k-NN (cosine similarity)")
    p.add_argument(
        "--limit-per-class",
        type=int,
        help="at most this many training faces per class (quick runs)",
    )
    p.add_argument("--finetune-epochs", type=int, default=30)
    p.add_argument("--finetune-batch-size", type=int, default=128)
    p.add_argument("--finetune-lr", type=float, default=0.05)
    p.add_argument(
        "--finetune-backbone-lr-scale",
        type=float,
        default=1.0,
        help="fine-tuning from --init: the backbone learns at this times --finetune-lr",
    )
    p.add_argument(
        "--finetune-head-epochs",
        type=int,
        default=0,
        help="fine-tuning from --init: the first N epochs train the head only",
    )
    p.add_argument(
        "--out", default="runs/probe", help="folder for results.json, results.md, finetune runs"
    )
    add_run_arguments(
        p,
        resume=False,
        amp_help=None,
        seed_help="seed of the label subsets (and of --random)",
        progress_help="no progress bars in fine-tuning",
    )


def run(args: argparse.Namespace) -> int:
    options = keyword_arguments(args)
    del options["random"]  # the encoder is random when no --init is given
    probe.probe(**options)
    return 0

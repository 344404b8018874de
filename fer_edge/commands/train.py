"""Supervised training of a FER classifier.

Reads any dataset layout fer-edge knows (split folders, class folders, Kaggle CSV, label list),
trains with batched on-device augmentation, evaluates on the validation split after every epoch,
keeps the best epoch (by validation accuracy) as a pytorch bundle in OUT/best, and writes a
checkpoint every epoch so ``--resume`` continues after a kill without losing a finished epoch.

What is minimised is the ``--method``'s objective: plain cross-entropy, or a method file's
``Objective`` for supervised methods that need more: auxiliary heads, per-epoch relabelling,
regression targets. From Python: ``fer_edge.train.fit(data=..., arch=..., epochs=...)``.
"""

from __future__ import annotations

import argparse

from fer_edge.train import supervised
from fer_edge.train.augment import AUGMENTS
from fer_edge.train.nets import ARCHS
from fer_edge.train.objective import OBJECTIVES, describe

from .options import (
    add_benchmark_arguments,
    add_run_arguments,
    add_settings_argument,
    keyword_arguments,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = "methods (--method):\n" + describe()
    p.add_argument(
        "--data",
        required=True,
        help="split root with train/ and val/, a class-folder root, a Kaggle fer2013.csv or a label-list CSV",
    )
    p.add_argument(
        "--train-split", default="train", help="split used for training when DATA has splits"
    )
    p.add_argument("--val-split", default="val", help="split used to select the best epoch")
    p.add_argument(
        "--val-data",
        help="separate validation dataset (default: --val-split of DATA, else 10%% of train)",
    )
    p.add_argument("--arch", default="vgg", choices=sorted(ARCHS), help="network architecture")
    p.add_argument("--size", type=int, default=48, help="input side in pixels")
    p.add_argument("--channels", type=int, default=1, choices=(1, 3), help="1 = gray, 3 = BGR")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    p.add_argument(
        "--lr", type=float, default=0.05, help="peak learning rate (after warm-up, cosine decay)"
    )
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument(
        "--augment",
        default="standard",
        choices=list(AUGMENTS),
        help="standard: flip, small affine jitter, light photometric jitter, erasing; camera: "
        "also the crops, roll, exposure, low resolution, blur and noise of other cameras",
    )
    p.add_argument(
        "--method", default="ce", choices=list(OBJECTIVES), help="training objective (see below)"
    )
    add_settings_argument(p, "--method")
    p.add_argument(
        "--label-noise",
        type=float,
        default=0.0,
        help="replace this fraction of the training labels by a different class drawn uniformly "
        "(symmetric noise, seeded by --seed; for robustness experiments)",
    )
    p.add_argument(
        "--init",
        help="checkpoint whose backbone initialises the network (e.g. from fer-edge pretrain)",
    )
    p.add_argument(
        "--mixup",
        type=float,
        default=0.0,
        metavar="ALPHA",
        help="mix each batch with a shuffled copy of itself, lambda ~ Beta(ALPHA, ALPHA), and "
        "the targets alike (e.g. 0.2; 0 = off; --method ce only)",
    )
    p.add_argument(
        "--cutmix",
        type=float,
        default=0.0,
        metavar="ALPHA",
        help="paste a box of another face covering 1 - lambda of each image, lambda ~ "
        "Beta(ALPHA, ALPHA) (e.g. 1.0); with --mixup too, each batch takes one at even odds",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="keep an exponential moving average of the weights with this decay per step "
        "(e.g. 0.999); validation scores it and OUT/best ships it (0 = off)",
    )
    p.add_argument(
        "--backbone-lr-scale",
        type=float,
        default=1.0,
        help="with --init: the backbone learns at this times --lr (e.g. 0.1), the head at --lr",
    )
    p.add_argument(
        "--head-epochs",
        type=int,
        default=0,
        help="with --init: train only the head for the first N epochs (the backbone and its "
        "BatchNorm statistics frozen), then everything: linear probing, then fine-tuning",
    )
    p.add_argument(
        "--label-fraction",
        type=float,
        default=1.0,
        help="train on this class-stratified fraction of the labels",
    )
    p.add_argument(
        "--limit-per-class",
        type=int,
        help="at most this many training faces per class (quick runs)",
    )
    p.add_argument(
        "--out", default="runs/train", help="run folder: last.pt, metrics.jsonl, curves.png, best/"
    )
    add_run_arguments(p)
    add_benchmark_arguments(p)


def run(args: argparse.Namespace) -> int:
    supervised.fit(**keyword_arguments(args))
    return 0

"""Self-supervised pretraining of a face encoder (no labels used).

Trains one of the methods below on the faces in DATA (class folders, split folders, a CSV or a
plain image folder; labels are ignored) and writes OUT/last.pt every epoch. That checkpoint holds
``backbone`` (the encoder weights ``fer-edge train --init OUT/last.pt`` and ``fer-edge probe
--init OUT/last.pt`` load), the full method state for ``--resume``, and the run's configuration.

The dataset lives on the training device as uint8 and both views are augmented there in batches;
bf16 autocast and channels_last on GPU. Several GPUs or nodes: launch with ``torchrun
--nproc_per_node N -m fer_edge.cli pretrain ...`` (DDP; --batch-size is the global batch).
From Python: ``fer_edge.train.pretrain.fit(method=..., data=..., epochs=...)``.
"""

from __future__ import annotations

import argparse

from fer_edge.train import methods, pretrain
from fer_edge.train.nets import ARCHS

from .options import (
    DEVICE_HELP,
    add_benchmark_arguments,
    add_run_arguments,
    add_settings_argument,
    keyword_arguments,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = "methods:\n" + methods.describe()
    p.add_argument(
        "--method",
        required=True,
        choices=list(methods.METHODS),
        help="self-supervised method (see below)",
    )
    p.add_argument(
        "--data",
        required=True,
        help="faces: split root, class-folder root, CSV or a plain image folder (labels are ignored)",
    )
    p.add_argument("--split", default="train", help="split to read when DATA has split folders")
    p.add_argument("--arch", default="vgg", choices=sorted(ARCHS), help="encoder architecture")
    p.add_argument("--size", type=int, default=48, help="input side in pixels")
    p.add_argument("--channels", type=int, default=1, choices=(1, 3), help="1 = gray, 3 = BGR")
    add_settings_argument(p, "method")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument(
        "--batch-size", type=int, default=256, help="global batch (split over DDP ranks)"
    )
    p.add_argument("--optimizer", choices=("sgd", "adamw"), help="default: the method's")
    p.add_argument(
        "--lr",
        type=float,
        help="peak learning rate per 256 images (default: the method's); scaled by batch/256",
    )
    p.add_argument("--weight-decay", type=float, help="default: the method's")
    p.add_argument("--warmup-epochs", type=float, default=5.0)
    p.add_argument("--limit", type=int, help="use a random subset of this many faces (quick runs)")
    p.add_argument(
        "--out", default="runs/pretrain", help="run folder: last.pt, metrics.jsonl, curves.png"
    )
    p.add_argument(
        "--heatmaps",
        metavar="DIR",
        help="fra/fra-mod: after training, write region heatmap overlays (PNG) here",
    )
    p.add_argument("--heatmap-faces", type=int, default=16, help="how many faces --heatmaps draws")
    add_run_arguments(p, device_help=f"{DEVICE_HELP} (under torchrun: cuda:LOCAL_RANK)")
    add_benchmark_arguments(p)


def run(args: argparse.Namespace) -> int:
    pretrain.fit(**keyword_arguments(args))
    return 0

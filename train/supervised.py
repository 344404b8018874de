"""Supervised training of a FER classifier.

Reads any dataset layout fer-edge knows (split folders, class folders, Kaggle CSV, label list),
trains with batched on-device augmentation, evaluates on the validation split after every epoch,
keeps the best epoch (by validation accuracy) as a pytorch bundle in OUT/best, and writes a
checkpoint every epoch so ``--resume`` continues after a kill without losing a finished epoch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fer_edge.data import FaceDataset, load_dataset, stratified_subset
from fer_edge.errors import DatasetError, InputError
from fer_edge.labels import FER_LABELS
from fer_edge.metrics import classification_report
from fer_edge.preprocess import PreprocessSpec

from . import engine
from .augment import supervised_augment
from .checkpoint import load_checkpoint
from .nets import ARCHS, build
from .predictor import predict_logits, save_pytorch_bundle


def add_arguments(p: argparse.ArgumentParser) -> None:
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
        "--init",
        help="checkpoint whose backbone initialises the network (e.g. from fer-edge pretrain)",
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", default="runs/train", help="run folder: last.pt, metrics.jsonl, curves.png, best/"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on GPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _limit(ds: FaceDataset, per_class: int | None) -> FaceDataset:
    if not per_class:
        return ds
    keep = np.concatenate(
        [np.flatnonzero(ds.labels == c)[:per_class] for c in range(len(ds.label_names))]
    )
    return ds.subset(np.sort(keep))


def _first_line(path: Path) -> str:
    try:
        with path.open(encoding="utf-8") as f:
            return f.readline()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not a readable UTF-8 CSV file: {e}") from None


def load_train_val(
    args: argparse.Namespace, spec: PreprocessSpec
) -> tuple[FaceDataset, FaceDataset]:
    data = Path(args.data)
    has_splits = data.is_dir() and (data / args.train_split).is_dir()
    is_kaggle_csv = data.suffix.lower() == ".csv" and "pixels" in _first_line(data)
    split = args.train_split if (has_splits or is_kaggle_csv) else None
    train = load_dataset(data, split, spec=spec, progress=not args.no_progress)
    if args.val_data:
        val = load_dataset(args.val_data, spec=spec)
    elif has_splits and (data / args.val_split).is_dir() or is_kaggle_csv:
        val = load_dataset(data, args.val_split, spec=spec)
    else:
        held = stratified_subset(train.labels, 0.1, seed=args.seed)
        rest = np.setdiff1d(np.arange(len(train)), held)
        train, val = train.subset(rest), train.subset(held)
    if (train.labels < 0).all():
        raise DatasetError(
            f"{args.data} has no labels; supervised training needs class folders, a CSV or a label list"
        )
    train = _limit(train, args.limit_per_class)
    if args.label_fraction < 1:
        train = train.subset(stratified_subset(train.labels, args.label_fraction, seed=args.seed))
    return train, val


def init_from(model: torch.nn.Module, path: str) -> int:
    """Copy backbone weights from a (self-supervised or supervised) checkpoint; returns how many
    tensors were loaded."""
    state = load_checkpoint(path, require=())
    weights = state.get("backbone") or state.get("model")
    if not isinstance(weights, dict):
        raise InputError(f"{path} has neither 'backbone' nor 'model' weights")
    own = model.backbone.state_dict()
    taken = {}
    for k, v in weights.items():
        key = k[len("backbone.") :] if k.startswith("backbone.") else k
        if key in own and own[key].shape == v.shape:
            taken[key] = v
    if not taken:
        raise InputError(f"no weights in {path} fit the {model.arch} backbone")
    model.backbone.load_state_dict(taken, strict=False)
    return len(taken)


def evaluate_split(model, ds: FaceDataset, spec, device) -> dict:
    logits = predict_logits(model, ds.images, spec, device)
    rep = classification_report(ds.labels, logits, ds.label_names)
    loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(ds.labels)).item())
    return {"val_loss": loss, "val_accuracy": rep["accuracy"], "val_macro_f1": rep["macro_f1"]}


def fit(args: argparse.Namespace) -> Path:
    """Train as ``args`` says; returns the path of the best-epoch bundle."""
    t_start = time.time()
    if args.epochs < 1 or args.batch_size < 1:
        raise InputError("--epochs and --batch-size must be at least 1")
    engine.set_threads(args.threads)
    device = engine.pick_device(args.device)
    spec = PreprocessSpec(size=args.size, channels=args.channels)
    out = Path(args.out)
    config = {
        "method": "supervised",
        "arch": args.arch,
        "data": str(Path(args.data).resolve()),
        "size": args.size,
        "channels": args.channels,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "label_smoothing": args.label_smoothing,
        "label_fraction": args.label_fraction,
        "limit_per_class": args.limit_per_class,
        "seed": args.seed,
        "init": args.init,
    }
    run = engine.Run(out, config)
    resume_state = run.resume_state(args.resume)

    train, val = load_train_val(args, spec)
    print(f"train: {train.summary()}\nval: {val.summary()}", file=sys.stderr)
    if len(train) < args.batch_size:
        raise InputError(
            f"{len(train)} training faces is fewer than one batch of {args.batch_size}"
        )

    torch.manual_seed(args.seed)
    model = (
        build(args.arch, len(FER_LABELS), args.channels)
        .to(device)
        .to(memory_format=torch.channels_last)
    )
    if args.init and resume_state is None:
        print(
            f"initialised {init_from(model, args.init)} backbone tensors from {args.init}",
            file=sys.stderr,
        )
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if args.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=args.lr)
    steps_per_epoch = len(train) // args.batch_size
    sched = engine.warmup_cosine(
        opt, steps_per_epoch * args.epochs, int(steps_per_epoch * args.warmup_epochs)
    )

    start_epoch, best = 0, {"val_accuracy": -1.0}
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        opt.load_state_dict(resume_state["optimizer"])
        sched.load_state_dict(resume_state["scheduler"])
        start_epoch = int(resume_state["epoch"]) + 1
        best = dict(resume_state.get("best", best))
        print(f"resumed {out} after epoch {start_epoch}", file=sys.stderr)

    images = torch.from_numpy(train.images).to(device)  # uint8 on the device, augmented there
    labels = torch.from_numpy(train.labels).to(device)
    augment = supervised_augment(spec)
    amp = not args.no_amp

    def step(idx: torch.Tensor, g: torch.Generator) -> dict[str, float]:
        model.train()
        idx = idx.to(device)
        x = augment(images[idx], g).contiguous(memory_format=torch.channels_last)
        with engine.autocast(device, amp):
            loss = F.cross_entropy(model(x), labels[idx], label_smoothing=args.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return {"loss": float(loss.item())}

    def state(epoch: int) -> dict:
        return {
            "model": model.state_dict(),
            "arch": args.arch,
            "num_classes": len(FER_LABELS),
            "in_channels": args.channels,
            "labels": list(FER_LABELS),
            "preprocess": spec.to_dict(),
            "epoch": epoch,
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "config": config,
            "best": best,
        }

    def on_epoch_end(epoch: int, record: dict) -> None:
        if record["val_accuracy"] > best["val_accuracy"]:
            best.update(
                epoch=epoch + 1,
                val_accuracy=record["val_accuracy"],
                val_macro_f1=record["val_macro_f1"],
            )
            save_pytorch_bundle(
                out / "best",
                state(epoch),
                metrics={
                    "val": {
                        "accuracy": record["val_accuracy"],
                        "macro_f1": record["val_macro_f1"],
                        "epoch": epoch + 1,
                    }
                },
                source={
                    "config": config,
                    "device": str(device),
                    "torch": torch.__version__,
                    "train_faces": len(train),
                },
            )

    engine.run_epochs(
        run,
        epochs=args.epochs,
        start_epoch=start_epoch,
        steps=lambda e: engine.epoch_batches(len(train), args.batch_size, args.seed, e),
        step=step,
        evaluate=lambda e: evaluate_split(model, val, spec, device),
        state_fn=state,
        seed=args.seed,
        progress=not args.no_progress,
        on_epoch_end=on_epoch_end,
    )
    print(
        f"done in {time.time() - t_start:.0f}s; best epoch {best.get('epoch')} "
        f"val accuracy {best['val_accuracy']:.4f} -> {out / 'best'}",
        file=sys.stderr,
    )
    return out / "best"


def run(args: argparse.Namespace) -> int:
    fit(args)
    return 0

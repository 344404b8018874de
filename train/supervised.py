"""Supervised training of a FER classifier.

Reads any dataset layout fer-edge knows (split folders, class folders, Kaggle CSV, label list),
trains with batched on-device augmentation, evaluates on the validation split after every epoch,
keeps the best epoch (by validation accuracy) as a pytorch bundle in OUT/best, and writes a
checkpoint every epoch so ``--resume`` continues after a kill without losing a finished epoch.

What is minimised is the ``--method``'s objective: plain cross-entropy here, or a method file's
``Objective`` (same interface as :class:`CrossEntropy`) for supervised methods that need more:
auxiliary heads, per-epoch relabelling, regression targets.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fer_edge.data import FaceDataset, load_dataset, stratified_subset
from fer_edge.errors import CheckpointError, DatasetError, InputError
from fer_edge.labels import FER_LABELS
from fer_edge.metrics import classification_report
from fer_edge.preprocess import PreprocessSpec

from . import engine, methods
from .augment import AUGMENTS
from .checkpoint import load_checkpoint
from .model_io import save_model_bundle
from .nets import ARCHS, build
from .predictor import predict_logits

# --method -> module holding its ``Objective``, ``HELP`` and ``DEFAULTS``
OBJECTIVES = {
    "ce": __name__,
    "mim-spl": f"{__package__}.methods.mim_spl",
    "avce": f"{__package__}.methods.avce",
}


def objective_module(name: str):
    if name not in OBJECTIVES:
        raise InputError(f"unknown --method {name!r}; choose from {', '.join(OBJECTIVES)}")
    return importlib.import_module(OBJECTIVES[name])


def _describe_objectives() -> str:
    lines = []
    for name in OBJECTIVES:
        module = objective_module(name)
        listed = " ".join(f"{k}={v}" for k, v in module.DEFAULTS.items()) or "-"
        lines.append(f"  {name:<8} {module.HELP}\n{'':11}settings: {listed}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = "methods (--method):\n" + _describe_objectives()
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
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a --method setting (repeatable)",
    )
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
    p.add_argument(
        "--no-amp",
        action="store_true",
        help="train in fp32 (default: bf16 autocast on a GPU and on CPUs with native bf16)",
    )
    p.add_argument(
        "--benchmark",
        action="store_true",
        help="time training steps, print one JSON line with images_per_s and exit (writes nothing)",
    )
    p.add_argument("--benchmark-steps", type=int, default=20, help="timed steps of --benchmark")
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
        unlabelled = np.flatnonzero(train.labels < 0)  # valence/arousal-only rows
        if len(unlabelled):
            pick = np.random.default_rng(args.seed).choice(
                unlabelled, max(1, len(unlabelled) // 10), replace=False
            )
            held = np.union1d(held, pick)
        rest = np.setdiff1d(np.arange(len(train)), held)
        train, val = train.subset(rest), train.subset(held)
    if (train.labels < 0).all() and train.valence is None:
        raise DatasetError(
            f"{args.data} has no labels; supervised training needs class folders, a CSV or a label list"
        )
    train = _limit(train, args.limit_per_class)
    if args.label_fraction < 1:
        train = train.subset(stratified_subset(train.labels, args.label_fraction, seed=args.seed))
    return train, val


def refuse_extra_input_channels(state: dict, path) -> None:
    """An encoder pretrained on more channels than its faces have (HNCL with heatmap_channel:
    gray + landmark heatmap) needs them at every use, and fine-tuning and probing feed faces only:
    refuse it rather than silently drop its first layer."""
    channels, faces = state.get("in_channels"), (state.get("preprocess") or {}).get("channels")
    if channels is not None and faces is not None and int(channels) > int(faces):
        raise CheckpointError(
            f"{path}: its encoder takes {channels} input channels ({faces} face channel(s) plus "
            f"{int(channels) - int(faces)} landmark-heatmap channel(s), hncl heatmap_channel=true), "
            "but fine-tuning and probing feed faces only; pretrain with heatmap_channel=false"
        )


def init_from(model: torch.nn.Module, path: str) -> int:
    """Copy backbone weights from a (self-supervised or supervised) checkpoint; returns how many
    tensors were loaded."""
    state = load_checkpoint(path, require=())
    refuse_extra_input_channels(state, path)
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
    logits = predict_logits(model, ds.images, spec, device)[:, : len(ds.label_names)]
    rep = classification_report(ds.labels, logits, ds.label_names)
    loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(ds.labels)).item())
    return {"val_loss": loss, "val_accuracy": rep["accuracy"], "val_macro_f1": rep["macro_f1"]}


def inject_label_noise(
    labels: np.ndarray, fraction: float, num_classes: int, seed: int
) -> np.ndarray:
    """Symmetric label noise: ``fraction`` of the labels (chosen at random) replaced by one of the
    other classes, drawn uniformly; the rest unchanged."""
    if not 0 <= fraction < 1:
        raise InputError(f"--label-noise must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed + 91_357)
    noisy = labels.copy()
    flip = rng.choice(len(labels), int(round(fraction * len(labels))), replace=False)
    # adding 1..K-1 modulo K never lands on the true class
    noisy[flip] = (labels[flip] + rng.integers(1, num_classes, len(flip))) % num_classes
    return noisy


HELP = "cross-entropy on the labels (--label-smoothing)"
DEFAULTS: dict = {}


class CrossEntropy:
    """The default objective, and the interface every ``--method``'s ``Objective`` follows.

    Built after the network, before the first epoch (so it can refuse data it cannot use), with
    the validation faces and the training faces (labels possibly noised by
    ``--label-noise``; ``true_labels`` are the labels before noise, for diagnostics only, never
    for training). ``extra`` holds trainable modules besides the network (auxiliary heads,
    decoders): they join the optimizer and the checkpoint, not the bundle. ``select`` names the
    validation metric (higher is better) that picks the epoch saved to OUT/best."""

    select = "val_accuracy"

    def __init__(
        self,
        net: torch.nn.Module,
        train: FaceDataset,
        val: FaceDataset,
        cfg: dict,
        args: argparse.Namespace,
        device: torch.device,
        true_labels: np.ndarray,
    ):
        self.net, self.smoothing = net, args.label_smoothing
        self.labels = torch.from_numpy(train.labels).to(device)
        self.extra = torch.nn.ModuleDict()

    @staticmethod
    def num_outputs(num_classes: int) -> int:
        """Width of the network's head for ``num_classes`` classes."""
        return num_classes

    def loss(self, x: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Augmented faces ``x`` of training rows ``idx`` -> {"loss": ..., other parts}."""
        logits = self.net(x)
        return {
            "loss": F.cross_entropy(
                logits, self.labels[idx], ignore_index=-1, label_smoothing=self.smoothing
            )
        }

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Work between epochs (re-splitting, relabelling); returns numbers for the log."""
        return {}

    def evaluate(self, val: FaceDataset, spec: PreprocessSpec, device) -> dict[str, float]:
        return evaluate_split(self.net, val, spec, device)

    def state_dict(self) -> dict:
        """What a resumed run needs besides the weights (e.g. soft labels)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


Objective = CrossEntropy


def fit(args: argparse.Namespace) -> Path:
    """Train as ``args`` says; returns the path of the best-epoch bundle."""
    t_start = time.time()
    if args.epochs < 1 or args.batch_size < 1:
        raise InputError("--epochs and --batch-size must be at least 1")
    engine.set_threads(args.threads)
    device = engine.pick_device(args.device)
    spec = PreprocessSpec(size=args.size, channels=args.channels)
    out = Path(args.out)
    objective_cls = objective_module(args.method).Objective
    cfg = methods.settings(
        args.method, objective_module(args.method).DEFAULTS, {}, methods.parse_settings(args.set)
    )
    config = {
        "method": "supervised" if args.method == "ce" else args.method,
        "method_config": cfg,
        "label_noise": args.label_noise,
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
        "augment": args.augment,
        "label_fraction": args.label_fraction,
        "limit_per_class": args.limit_per_class,
        "seed": args.seed,
        "init": args.init,
    }
    # --benchmark writes nothing, not even the run folder
    run = None if args.benchmark else engine.Run(out, config)
    resume_state = None if run is None else run.resume_state(args.resume)

    train, val = load_train_val(args, spec)
    print(f"train: {train.summary()}\nval: {val.summary()}", file=sys.stderr)
    if len(train) < args.batch_size:
        raise InputError(
            f"{len(train)} training faces is fewer than one batch of {args.batch_size}"
        )

    true_labels = train.labels
    if args.label_noise:
        noisy = inject_label_noise(
            train.labels, args.label_noise, len(train.label_names), args.seed
        )
        train = FaceDataset(**{**vars(train), "labels": noisy})
        print(
            f"label noise: {int((noisy != true_labels).sum())} of {len(train)} labels changed",
            file=sys.stderr,
        )

    torch.manual_seed(args.seed)
    model = (
        build(args.arch, objective_cls.num_outputs(len(FER_LABELS)), args.channels)
        .to(device)
        .to(memory_format=torch.channels_last)
    )
    objective = objective_cls(model, train, val, cfg, args, device, true_labels)
    objective.extra.to(device)
    if args.init and resume_state is None:
        print(
            f"initialised {init_from(model, args.init)} backbone tensors from {args.init}",
            file=sys.stderr,
        )
    trainable = [*model.parameters(), *objective.extra.parameters()]
    decay = [p for p in trainable if p.ndim > 1]
    no_decay = [p for p in trainable if p.ndim <= 1]
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

    start_epoch, best = 0, {objective.select: -float("inf")}
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        objective.extra.load_state_dict(resume_state["extra"])
        objective.load_state_dict(resume_state["objective"])
        opt.load_state_dict(resume_state["optimizer"])
        sched.load_state_dict(resume_state["scheduler"])
        start_epoch = int(resume_state["epoch"]) + 1
        best = dict(resume_state.get("best", best))
        print(f"resumed {out} after epoch {start_epoch}", file=sys.stderr)

    images = torch.from_numpy(train.images).to(device)  # uint8 on the device, augmented there
    augment = AUGMENTS[args.augment](spec)
    amp = not args.no_amp

    def step(idx: torch.Tensor, g: torch.Generator) -> dict[str, float]:
        model.train()
        objective.extra.train()
        idx = idx.to(device)
        x = augment(images[idx], g).contiguous(memory_format=torch.channels_last)
        with engine.autocast(device, amp):
            parts = objective.loss(x, idx)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        opt.step()
        sched.step()
        return {k: float(v.detach()) for k, v in parts.items()}

    batches = lambda e: engine.epoch_batches(len(train), args.batch_size, args.seed, e)  # noqa: E731
    if args.benchmark:
        rate = engine.time_steps(
            step, batches(0), seed=args.seed, steps=args.benchmark_steps, device=device
        )
        print(
            engine.benchmark_record(
                rate,
                command="train",
                device=device,
                amp=amp,
                method=args.method,
                arch=args.arch,
                size=args.size,
                batch_size=args.batch_size,
            )
        )
        return out

    def evaluate(epoch: int) -> dict[str, float]:
        return {**objective.end_epoch(epoch), **objective.evaluate(val, spec, device)}

    def state(epoch: int) -> dict:
        return {
            "model": model.state_dict(),
            "extra": objective.extra.state_dict(),
            "objective": objective.state_dict(),
            "arch": args.arch,
            "num_classes": objective_cls.num_outputs(len(FER_LABELS)),
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
        if record[objective.select] > best[objective.select]:
            scores = {k: v for k, v in record.items() if k.startswith("val_")}
            best.update(epoch=epoch + 1, **scores)
            save_model_bundle(
                out / "best",
                state(epoch),
                metrics={"val": {**{k[4:]: v for k, v in scores.items()}, "epoch": epoch + 1}},
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
        steps=batches,
        step=step,
        evaluate=evaluate,
        state_fn=state,
        seed=args.seed,
        progress=not args.no_progress,
        on_epoch_end=on_epoch_end,
    )
    print(
        f"done in {time.time() - t_start:.0f}s; best epoch {best.get('epoch')} "
        f"{objective.select} {best[objective.select]:.4f} -> {out / 'best'}",
        file=sys.stderr,
    )
    return out / "best"


def run(args: argparse.Namespace) -> int:
    fit(args)
    return 0

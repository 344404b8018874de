"""Supervised training of a FER classifier: :func:`fit`, also ``fer_edge.train.fit``.

Reads any dataset layout fer-edge knows (split folders, class folders, Kaggle CSV, label list),
trains with batched on-device augmentation, evaluates on the validation split after every epoch,
keeps the best epoch (by validation accuracy) as a pytorch bundle in OUT/best, and writes a
checkpoint every epoch so ``resume=True`` continues after a kill without losing a finished epoch.

What is minimised is the ``method``'s objective (:mod:`fer_edge.train.objective`): plain
cross-entropy, or a method file's ``Objective`` for supervised methods that need more.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fer_edge.data import FaceDataset, load_train_val
from fer_edge.errors import CheckpointError, InputError
from fer_edge.labels import FER_LABELS
from fer_edge.preprocess import PreprocessSpec

from . import engine, methods
from .augment import mix_batch, training_augment
from .checkpoint import load_checkpoint
from .model_io import save_model_bundle
from .nets import build
from .objective import ObjectiveSetup, objective_module


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


def ema_with_warmup(decay: float):
    """``AveragedModel``'s update for an EMA whose decay warms up: ``min(decay, (1 + n) / (10 +
    n))`` after n updates (as timm's ModelEma does). Written here because torch's
    ``get_ema_multi_avg_fn`` keeps one decay from the first step: at 0.999 the average is still
    half the random initialisation after 700 steps (3 epochs of FER-2013), and its validation
    accuracy sat at chance while the raw weights reached 47%."""

    @torch.no_grad()
    def update(averaged: list, current: list, num_averaged) -> None:
        if not torch.is_floating_point(averaged[0]):  # counters (BN's num_batches_tracked)
            torch._foreach_copy_(averaged, current)
            return
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(averaged, current, 1 - d)

    return update


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


def fit(
    *,
    data: str | os.PathLike,
    arch: str = "vgg",
    size: int = 48,
    channels: int = 1,
    epochs: int = 30,
    batch_size: int = 128,
    optimizer: str = "sgd",
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    warmup_epochs: float = 1.0,
    label_smoothing: float = 0.0,
    augment: str = "standard",
    method: str = "ce",
    settings: dict | None = None,
    label_noise: float = 0.0,
    init: str | os.PathLike | None = None,
    backbone_lr_scale: float = 1.0,
    head_epochs: int = 0,
    ema: float = 0.0,
    mixup: float = 0.0,
    cutmix: float = 0.0,
    train_split: str = "train",
    val_split: str = "val",
    val_data: str | os.PathLike | None = None,
    label_fraction: float = 1.0,
    limit_per_class: int | None = None,
    seed: int = 0,
    out: str | os.PathLike = "runs/train",
    resume: bool = False,
    device: str = "auto",
    threads: int | None = None,
    amp: bool = True,
    progress: bool = True,
    benchmark: bool = False,
    benchmark_steps: int = 20,
) -> Path:
    """Train a classifier on ``data``; returns the path of the best-epoch bundle (OUT/best).

    The arguments are ``fer-edge train``'s options (``fer-edge train --help`` says what each
    does), with ``settings`` for ``--set`` (a method's settings by name), ``amp=False`` for
    ``--no-amp`` and ``progress=False`` for ``--no-progress``. ``benchmark=True`` times
    ``benchmark_steps`` training steps, prints one JSON line and writes nothing.
    """
    t_start = time.time()
    if epochs < 1 or batch_size < 1:
        raise InputError("--epochs and --batch-size must be at least 1")
    if (backbone_lr_scale != 1.0 or head_epochs) and not init:
        raise InputError(
            "--backbone-lr-scale and --head-epochs are for a pretrained --init backbone"
        )
    if mixup < 0 or cutmix < 0:
        raise InputError("--mixup and --cutmix take a Beta alpha >= 0 (0 = off)")
    if (mixup or cutmix) and not objective_module(method).Objective.mixes:
        raise InputError(f"--mixup and --cutmix are for --method ce, not {method}")
    if not 0 <= ema < 1:
        raise InputError(f"--ema must be in [0, 1) (0 = off), got {ema}")
    if backbone_lr_scale < 0 or not 0 <= head_epochs < epochs:
        raise InputError("--backbone-lr-scale must be >= 0 and --head-epochs in [0, --epochs)")
    device = engine.start(device, threads)
    spec = PreprocessSpec(size=size, channels=channels)
    out = Path(out)
    objective_cls = objective_module(method).Objective
    cfg = methods.settings(method, objective_module(method).DEFAULTS, {}, settings)
    config = {
        "method": "supervised" if method == "ce" else method,
        "method_config": cfg,
        "label_noise": label_noise,
        "arch": arch,
        "data": str(Path(data).resolve()),
        "size": size,
        "channels": channels,
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "lr": lr,
        "weight_decay": weight_decay,
        "label_smoothing": label_smoothing,
        "augment": augment,
        "label_fraction": label_fraction,
        "limit_per_class": limit_per_class,
        "seed": seed,
        "init": None if init is None else str(init),
        "backbone_lr_scale": backbone_lr_scale,
        "head_epochs": head_epochs,
        "ema": ema,
        "mixup": mixup,
        "cutmix": cutmix,
    }
    # --benchmark writes nothing, not even the run folder
    run = None if benchmark else engine.Run(out, config)
    resume_state = None if run is None else run.resume_state(resume)

    train, val = load_train_val(
        data,
        spec=spec,
        train_split=train_split,
        val_split=val_split,
        val_data=val_data,
        seed=seed,
        limit_per_class=limit_per_class,
        label_fraction=label_fraction,
        progress=progress,
    )
    print(f"train: {train.summary()}\nval: {val.summary()}", file=sys.stderr)
    if len(train) < batch_size:
        raise InputError(f"{len(train)} training faces is fewer than one batch of {batch_size}")

    true_labels = train.labels
    if label_noise:
        noisy = inject_label_noise(train.labels, label_noise, len(train.label_names), seed)
        train = FaceDataset(**{**vars(train), "labels": noisy})
        print(
            f"label noise: {int((noisy != true_labels).sum())} of {len(train)} labels changed",
            file=sys.stderr,
        )

    torch.manual_seed(seed)
    model = (
        build(arch, objective_cls.num_outputs(len(FER_LABELS)), channels)
        .to(device)
        .to(memory_format=torch.channels_last)
    )
    setup = ObjectiveSetup(spec, label_smoothing, device, true_labels)
    objective = objective_cls(model, train, val, cfg, setup)
    objective.extra.to(device)
    if init and resume_state is None:
        print(
            f"initialised {init_from(model, init)} backbone tensors from {init}",
            file=sys.stderr,
        )
    opt = engine.make_optimizer(
        [model, objective.extra],
        optimizer,
        lr,
        weight_decay,
        nesterov=True,
        slow=model.backbone if backbone_lr_scale != 1.0 else None,
        slow_factor=backbone_lr_scale,
    )
    # An exponential moving average of the weights (and BatchNorm statistics), updated after
    # every step: it is what validation scores and OUT/best ships when --ema is on.
    averaged = None
    if ema:
        averaged = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=ema_with_warmup(ema), use_buffers=True
        )
    steps_per_epoch = len(train) // batch_size
    sched = engine.warmup_cosine(
        opt, steps_per_epoch * epochs, int(steps_per_epoch * warmup_epochs)
    )

    start_epoch, best = 0, {objective.select: -float("inf")}
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        objective.extra.load_state_dict(resume_state["extra"])
        objective.load_state_dict(resume_state["objective"])
        opt.load_state_dict(resume_state["optimizer"])
        sched.load_state_dict(resume_state["scheduler"])
        if averaged is not None:
            averaged.load_state_dict(resume_state["ema"])
        start_epoch = int(resume_state["epoch"]) + 1
        best = dict(resume_state.get("best", best))
        print(f"resumed {out} after epoch {start_epoch}", file=sys.stderr)

    images = torch.from_numpy(train.images).to(device)  # uint8 on the device, augmented there
    augment_batch = training_augment(augment, spec)

    head_only = [False]  # set per epoch by batches(): the first head_epochs train the head only

    def step(idx: torch.Tensor, g: torch.Generator) -> dict[str, float]:
        model.train()
        objective.extra.train()
        if head_only[0]:
            model.backbone.eval()  # the pretrained BatchNorm statistics stay as they are
        idx = idx.to(device)
        x = augment_batch(images[idx], g)
        if mixup or cutmix:
            x, partner, lam = mix_batch(x, g, mixup, cutmix)
        x = x.contiguous(memory_format=torch.channels_last)
        with engine.autocast(device, amp):
            if mixup or cutmix:
                parts = objective.mixed_loss(x, idx, partner, lam)
            else:
                parts = objective.loss(x, idx)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        opt.step()
        sched.step()
        if averaged is not None:
            averaged.update_parameters(model)
        return {k: float(v.detach()) for k, v in parts.items()}

    def batches(epoch: int) -> list[torch.Tensor]:
        """The epoch's batches; also freezes or frees the backbone for it (linear probing, then
        fine-tuning: Kumar et al. 2022, so a random head does not distort pretrained features)."""
        head_only[0] = epoch < head_epochs
        model.backbone.requires_grad_(not head_only[0])
        return engine.epoch_batches(len(train), batch_size, seed, epoch)

    if benchmark:
        print(
            engine.benchmark(
                step,
                batches(0),
                seed=seed,
                steps=benchmark_steps,
                device=device,
                amp=amp,
                command="train",
                fields={"method": method, "arch": arch, "size": size, "batch_size": batch_size},
            )
        )
        return out

    def evaluate(epoch: int) -> dict[str, float]:
        record = objective.end_epoch(epoch)
        if averaged is None:
            return {**record, **objective.evaluate(val, spec, device)}
        # the raw weights' scores too (raw_val_*), so the log shows what the average is worth
        raw = {f"raw_{k}": v for k, v in objective.evaluate(val, spec, device).items()}
        return {**record, **objective.evaluate(val, spec, device, net=averaged.module), **raw}

    def state(epoch: int) -> dict:
        return {
            "model": model.state_dict(),
            "extra": objective.extra.state_dict(),
            "objective": objective.state_dict(),
            "arch": arch,
            "num_classes": objective_cls.num_outputs(len(FER_LABELS)),
            "in_channels": channels,
            "labels": list(FER_LABELS),
            "preprocess": spec.to_dict(),
            "epoch": epoch,
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "config": config,
            "best": best,
            **({} if averaged is None else {"ema": averaged.state_dict()}),
        }

    def on_epoch_end(epoch: int, record: dict) -> None:
        if record[objective.select] > best[objective.select]:
            scores = {k: v for k, v in record.items() if k.startswith("val_")}
            best.update(epoch=epoch + 1, **scores)
            shipped = state(epoch)
            if averaged is not None:  # ship the average, which validation scored
                shipped = {**shipped, "model": averaged.module.state_dict()}
            save_model_bundle(
                out / "best",
                shipped,
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
        epochs=epochs,
        start_epoch=start_epoch,
        steps=batches,
        step=step,
        evaluate=evaluate,
        state_fn=state,
        seed=seed,
        progress=progress,
        on_epoch_end=on_epoch_end,
    )
    print(
        f"done in {time.time() - t_start:.0f}s; best epoch {best.get('epoch')} "
        f"{objective.select} {best[objective.select]:.4f} -> {out / 'best'}",
        file=sys.stderr,
    )
    return out / "best"

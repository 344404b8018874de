"""Self-supervised pretraining of a face encoder (no labels used).

Trains one of the methods below on the faces in DATA (class folders, split folders, a CSV or a
plain image folder; labels are ignored) and writes OUT/last.pt every epoch. That checkpoint holds
``backbone`` (the encoder weights ``fer-edge train --init OUT/last.pt`` and ``fer-edge probe
--init OUT/last.pt`` load), the full method state for ``--resume``, and the run's configuration.

The dataset lives on the training device as uint8 and both views are augmented there in batches;
bf16 autocast and channels_last on GPU. Several GPUs or nodes: launch with ``torchrun
--nproc_per_node N -m fer_edge.cli pretrain ...`` (DDP; --batch-size is the global batch).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fer_edge import atomic
from fer_edge.data import FaceDataset, load_dataset
from fer_edge.errors import DatasetError, InputError
from fer_edge.preprocess import PreprocessSpec

from . import distributed, engine, methods
from .augment import ssl_augment
from .nets import ARCHS


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
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a method setting (repeatable)",
    )
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", default="runs/pretrain", help="run folder: last.pt, metrics.jsonl, curves.png"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    p.add_argument(
        "--heatmaps",
        metavar="DIR",
        help="fra/fra-mod: after training, write region heatmap overlays (PNG) here",
    )
    p.add_argument("--heatmap-faces", type=int, default=16, help="how many faces --heatmaps draws")
    p.add_argument(
        "--benchmark",
        action="store_true",
        help="time training steps, print one JSON line with images_per_s and exit (writes nothing)",
    )
    p.add_argument("--benchmark-steps", type=int, default=20)
    p.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N (under torchrun: cuda:LOCAL_RANK)"
    )
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument(
        "--no-amp",
        action="store_true",
        help="train in fp32 (default: bf16 autocast on a GPU and on CPUs with native bf16)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_faces(args: argparse.Namespace, spec: PreprocessSpec, progress: bool) -> FaceDataset:
    data = Path(args.data)
    split = None
    if data.is_dir() and (data / args.split).is_dir():
        split = args.split
    elif data.is_file() and data.suffix.lower() == ".csv":
        with open(data, encoding="utf-8", errors="replace") as f:
            if "pixels" in f.readline():  # a Kaggle fer2013.csv: splits are its Usage column
                split = args.split
    ds = load_dataset(data, split, spec=spec, progress=progress)
    if args.limit and args.limit < len(ds):
        ds = ds.subset(
            np.sort(np.random.default_rng(args.seed).choice(len(ds), args.limit, replace=False))
        )
    return ds


def make_optimizer(
    model: torch.nn.Module, kind: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Weight decay on weight matrices and kernels only, never on biases, BN or region queries."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.ndim > 1 and "queries" not in n]
    rest = [p for n, p in params if not (p.ndim > 1 and "queries" not in n)]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=lr)


def fit(args: argparse.Namespace) -> torch.nn.Module:
    """Pretrain as ``args`` says; returns the method's model (the same on every DDP rank)."""
    t_start = time.time()
    engine.set_threads(args.threads)
    ctx = distributed.init(engine.pick_device(args.device))
    device, log = ctx.device, (print if ctx.is_main else lambda *a, **k: None)
    module = methods.get(args.method)
    cfg = methods.config(args.method, methods.parse_settings(args.set))
    chosen = {"optimizer": args.optimizer, "lr": args.lr, "weight_decay": args.weight_decay}
    optim = {**module.OPTIM, **{k: v for k, v in chosen.items() if v is not None}}
    if args.batch_size % ctx.world_size:
        raise InputError(
            f"--batch-size {args.batch_size} does not split evenly over {ctx.world_size} processes"
        )
    if args.heatmaps and not hasattr(module.Model, "region_maps"):
        raise InputError(
            f"--heatmaps needs a method with region heatmaps (fra, fra-mod), not {args.method}"
        )
    spec = PreprocessSpec(size=args.size, channels=args.channels)
    config = {
        "method": args.method,
        "method_config": cfg,
        **optim,
        "arch": args.arch,
        "data": str(Path(args.data).resolve()),
        "split": args.split,
        "limit": args.limit,
        "size": args.size,
        "channels": args.channels,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "warmup_epochs": args.warmup_epochs,
        "seed": args.seed,
        "world_size": ctx.world_size,
    }
    # --benchmark writes nothing, not even the run folder
    run = None if args.benchmark else engine.Run(Path(args.out), config)
    resume_state = None if run is None else run.resume_state(args.resume)

    faces = load_faces(args, spec, progress=ctx.is_main and not args.no_progress)
    log(
        f"pretraining {args.method} ({args.arch}) on {faces.summary()}; labels unused",
        file=sys.stderr,
    )
    if len(faces) < args.batch_size:
        raise DatasetError(
            f"{len(faces)} faces is fewer than one batch of {args.batch_size}; lower --batch-size"
        )
    if cfg.get("queue", 0) >= len(faces):
        # every face's own key from the previous epoch then sits in the queue as a negative
        log(
            f"warning: the queue ({cfg['queue']} keys) is not smaller than the dataset "
            f"({len(faces)} faces), so faces meet their own older keys as negatives; "
            f"use --set queue=N with N well below {len(faces)}",
            file=sys.stderr,
        )

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = (
        methods.build(args.method, args.arch, args.channels, cfg)
        .to(device)
        .to(memory_format=torch.channels_last)
    )
    trained = model
    if ctx.enabled:
        if device.type == "cuda" and module.SYNC_BN:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # buffers are averaged at every epoch end instead of broadcast at every step (MoCo's
        # queue is the same on all ranks anyway)
        trained = torch.nn.parallel.DistributedDataParallel(model, forward_sync_buffers=False)
    lr = optim["lr"] * args.batch_size / 256
    opt = make_optimizer(model, optim["optimizer"], lr, optim["weight_decay"])
    steps_per_epoch = len(faces) // args.batch_size
    total_steps = steps_per_epoch * args.epochs
    sched = engine.warmup_cosine(opt, total_steps, int(steps_per_epoch * args.warmup_epochs))

    start_epoch = 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        opt.load_state_dict(resume_state["optimizer"])
        sched.load_state_dict(resume_state["scheduler"])
        start_epoch = int(resume_state["epoch"]) + 1
        log(f"resumed {args.out} after epoch {start_epoch}", file=sys.stderr)

    views = module.prepare(faces, cfg, spec) if hasattr(module, "prepare") else methods.Views()
    source = faces.images if views.images is None else views.images
    images = torch.from_numpy(source).to(device)  # uint8 on the device, augmented there
    images2 = images if views.images2 is None else torch.from_numpy(views.images2).to(device)
    per_sample = {k: v.to(device) for k, v in views.per_sample.items()}
    augment = ssl_augment(spec)
    amp = not args.no_amp
    done = {"steps": start_epoch * steps_per_epoch}

    def channels_last(x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)

    def step(idx: torch.Tensor, g: torch.Generator) -> dict[str, float]:
        model.train()
        idx = distributed.shard(idx, ctx)
        idx2 = idx if views.partner is None else views.partner(idx, g)
        x1 = channels_last(augment(images[idx.to(device)], g))
        x2 = channels_last(augment(images2[idx2.to(device)], g))
        rows = {k: v[idx.to(device)] for k, v in per_sample.items()}
        if views.extra is not None:
            rows["extra"] = channels_last(augment(images[views.extra(idx, g).to(device)], g))
        with engine.autocast(device, amp):
            out = trained(x1, x2, **rows)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        sched.step()
        done["steps"] += 1
        model.momentum_update(done["steps"] / max(1, total_steps))
        return {k: float(v.detach()) for k, v in out.items()}

    def steps(epoch: int) -> list[torch.Tensor]:
        return engine.epoch_batches(len(faces), args.batch_size, args.seed, epoch)

    if args.benchmark:
        benchmark(step, steps(0), args, ctx, device)
        distributed.shutdown()
        return model

    def state(epoch: int) -> dict:
        return {
            "model": model.state_dict(),
            "backbone": model.backbone.state_dict(),
            "arch": args.arch,
            "in_channels": int(images.shape[3]),  # more than preprocess's with a heatmap channel
            "preprocess": spec.to_dict(),
            "method": args.method,
            "method_config": cfg,
            "epoch": epoch,
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "config": config,
        }

    def on_epoch_end(epoch: int, record: dict) -> None:
        distributed.average_buffers(model)

    engine.run_epochs(
        run,
        epochs=args.epochs,
        start_epoch=start_epoch,
        steps=steps,
        step=step,
        evaluate=None,
        state_fn=state,
        seed=args.seed + 7_777 * ctx.rank,  # per-rank augmentation randomness
        progress=ctx.is_main and not args.no_progress,
        on_epoch_end=on_epoch_end,
        is_main=ctx.is_main,
        reduce=lambda r: distributed.average_scalars(r, device),
    )
    if args.heatmaps and ctx.is_main:
        n = write_heatmaps(
            model, faces.images[: args.heatmap_faces], spec, Path(args.heatmaps), device
        )
        log(f"wrote {n} heatmap overlays to {args.heatmaps}", file=sys.stderr)
    log(
        f"done in {time.time() - t_start:.0f}s -> {run.last} (fer-edge train --init {run.last})",
        file=sys.stderr,
    )
    distributed.shutdown()
    return model


def benchmark(
    step, batches: list[torch.Tensor], args, ctx: distributed.Context, device: torch.device
) -> float:
    """Time ``--benchmark-steps`` training steps; prints one JSON line and returns the global
    images/s (each image counted once although it is augmented and encoded twice)."""
    # the batches are global (each rank takes its shard inside ``step``)
    rate = engine.time_steps(
        step, batches, seed=args.seed, steps=args.benchmark_steps, device=device
    )
    if ctx.is_main:
        print(
            engine.benchmark_record(
                rate,
                command="pretrain",
                device=device,
                amp=not args.no_amp,
                method=args.method,
                arch=args.arch,
                size=args.size,
                batch_size=args.batch_size,
                world_size=ctx.world_size,
            )
        )
    return rate


@torch.no_grad()
def write_heatmaps(
    model, faces: np.ndarray, spec: PreprocessSpec, out: Path, device: torch.device, scale: int = 3
) -> int:
    """One PNG per face: the face, then each region's heatmap overlaid on it (JET colours)."""
    import cv2

    from .augment import to_input

    model.eval()
    maps = (
        model.region_maps(to_input(torch.from_numpy(faces).to(device), spec)).float().cpu().numpy()
    )
    side = spec.size * scale
    for i, (face, face_maps) in enumerate(zip(faces, maps, strict=True)):
        img = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 or img.shape[-1] == 1 else img
        tiles = [img]
        for m in face_maps:
            heat = cv2.resize(
                m / max(float(m.max()), 1e-6), (side, side), interpolation=cv2.INTER_LINEAR
            )
            color = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
            tiles.append(cv2.addWeighted(img, 0.5, color, 0.5, 0))
        ok, png = cv2.imencode(".png", np.concatenate(tiles, axis=1))
        if not ok:
            raise InputError(f"could not encode heatmap {i} as PNG")
        atomic.write_bytes(out / f"face_{i:03d}.png", png.tobytes())
    return len(faces)


def run(args: argparse.Namespace) -> int:
    fit(args)
    return 0

"""Self-supervised pretraining of a face encoder (no labels used): :func:`fit`, the library side
of ``fer-edge pretrain``. OUT/last.pt holds ``backbone`` (what ``fer_edge.train.fit(init=...)``
and the probe load), the full method state for resuming, and the run's configuration. The
dataset lives on the training device as uint8 and both views are augmented there in batches;
under ``torchrun`` it trains with DDP (``batch_size`` is the global batch).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fer_edge import atomic
from fer_edge.data import FaceDataset, holds_split, load_dataset
from fer_edge.errors import DatasetError, InputError
from fer_edge.preprocess import PreprocessSpec

from . import distributed, engine, methods
from .augment import ssl_augment


def load_faces(
    data: str | os.PathLike,
    split: str,
    spec: PreprocessSpec,
    *,
    limit: int | None,
    seed: int,
    progress: bool,
) -> FaceDataset:
    """The faces of ``data`` (its ``split`` when it holds splits), at most ``limit`` of them drawn
    at random with ``seed``."""
    ds = load_dataset(
        data, split if holds_split(data, split) else None, spec=spec, progress=progress
    )
    if limit and limit < len(ds):
        ds = ds.subset(np.sort(np.random.default_rng(seed).choice(len(ds), limit, replace=False)))
    return ds


def fit(
    *,
    method: str,
    data: str | os.PathLike,
    split: str = "train",
    arch: str = "vgg",
    size: int = 48,
    channels: int = 1,
    settings: dict | None = None,
    epochs: int = 100,
    batch_size: int = 256,
    optimizer: str | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    warmup_epochs: float = 5.0,
    limit: int | None = None,
    seed: int = 0,
    out: str | os.PathLike = "runs/pretrain",
    resume: bool = False,
    heatmaps: str | os.PathLike | None = None,
    heatmap_faces: int = 16,
    device: str = "auto",
    threads: int | None = None,
    amp: bool = True,
    progress: bool = True,
    benchmark: bool = False,
    benchmark_steps: int = 20,
) -> torch.nn.Module:
    """Pretrain an encoder with ``method`` on the faces of ``data`` (labels unused); returns the
    method's model (the same on every DDP rank). OUT/last.pt holds the ``backbone`` that
    ``fer_edge.train.fit(init=...)`` and the probe load.

    The arguments are ``fer-edge pretrain``'s options (see its ``--help``), with ``settings``
    for ``--set``, ``amp=False`` for ``--no-amp`` and ``progress=False`` for ``--no-progress``;
    ``optimizer``, ``lr`` (per 256 images) and ``weight_decay`` default to the method's.
    """
    t_start = time.time()
    ctx = distributed.init(engine.start(device, threads))
    device, log = ctx.device, (print if ctx.is_main else lambda *a, **k: None)
    module = methods.get(method)
    cfg = methods.config(method, settings)
    chosen = {"optimizer": optimizer, "lr": lr, "weight_decay": weight_decay}
    optim = {**module.OPTIM, **{k: v for k, v in chosen.items() if v is not None}}
    if batch_size % ctx.world_size:
        raise InputError(
            f"--batch-size {batch_size} does not split evenly over {ctx.world_size} processes"
        )
    if heatmaps and not hasattr(module.Model, "region_maps"):
        raise InputError(
            f"--heatmaps needs a method with region heatmaps (fra, fra-mod), not {method}"
        )
    spec = PreprocessSpec(size=size, channels=channels)
    config = {
        "method": method,
        "method_config": cfg,
        **optim,
        "arch": arch,
        "data": str(Path(data).resolve()),
        "split": split,
        "limit": limit,
        "size": size,
        "channels": channels,
        "epochs": epochs,
        "batch_size": batch_size,
        "warmup_epochs": warmup_epochs,
        "seed": seed,
        "world_size": ctx.world_size,
    }
    # --benchmark writes nothing, not even the run folder
    run = None if benchmark else engine.Run(Path(out), config)
    resume_state = None if run is None else run.resume_state(resume)

    faces = load_faces(data, split, spec, limit=limit, seed=seed, progress=ctx.is_main and progress)
    log(
        f"pretraining {method} ({arch}) on {faces.summary()}; labels unused",
        file=sys.stderr,
    )
    if len(faces) < batch_size:
        raise DatasetError(
            f"{len(faces)} faces is fewer than one batch of {batch_size}; lower --batch-size"
        )
    if cfg.get("queue", 0) >= len(faces):
        # every face's own key from the previous epoch then sits in the queue as a negative
        log(
            f"warning: the queue ({cfg['queue']} keys) is not smaller than the dataset "
            f"({len(faces)} faces), so faces meet their own older keys as negatives; "
            f"use --set queue=N with N well below {len(faces)}",
            file=sys.stderr,
        )

    torch.manual_seed(seed)  # the same initial weights on every rank
    model = (
        methods.build(method, arch, channels, cfg).to(device).to(memory_format=torch.channels_last)
    )
    trained = model
    if ctx.enabled:
        if device.type == "cuda" and module.SYNC_BN:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # buffers are averaged at every epoch end instead of broadcast at every step (MoCo's
        # queue is the same on all ranks anyway)
        trained = torch.nn.parallel.DistributedDataParallel(model, forward_sync_buffers=False)
    opt = engine.make_optimizer(
        [model], optim["optimizer"], optim["lr"] * batch_size / 256, optim["weight_decay"]
    )
    steps_per_epoch = len(faces) // batch_size
    total_steps = steps_per_epoch * epochs
    sched = engine.warmup_cosine(opt, total_steps, int(steps_per_epoch * warmup_epochs))

    start_epoch = 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        opt.load_state_dict(resume_state["optimizer"])
        sched.load_state_dict(resume_state["scheduler"])
        start_epoch = int(resume_state["epoch"]) + 1
        log(f"resumed {out} after epoch {start_epoch}", file=sys.stderr)

    views = module.prepare(faces, cfg, spec) if hasattr(module, "prepare") else methods.Views()
    source = faces.images if views.images is None else views.images
    images = torch.from_numpy(source).to(device)  # uint8 on the device, augmented there
    images2 = images if views.images2 is None else torch.from_numpy(views.images2).to(device)
    per_sample = {k: v.to(device) for k, v in views.per_sample.items()}
    augment = ssl_augment(spec)
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
            parts = trained(x1, x2, **rows)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        opt.step()
        sched.step()
        done["steps"] += 1
        model.momentum_update(done["steps"] / max(1, total_steps))
        return {k: float(v.detach()) for k, v in parts.items()}

    def steps(epoch: int) -> list[torch.Tensor]:
        return engine.epoch_batches(len(faces), batch_size, seed, epoch)

    if benchmark:
        # the batches are global (each rank takes its shard inside ``step``); each image is
        # counted once although it is augmented and encoded twice
        fields = {"method": method, "arch": arch, "size": size, "batch_size": batch_size}
        line = engine.benchmark(
            step,
            steps(0),
            seed=seed,
            steps=benchmark_steps,
            device=device,
            amp=amp,
            command="pretrain",
            fields={**fields, "world_size": ctx.world_size},
        )
        log(line)
        distributed.shutdown()
        return model

    def state(epoch: int) -> dict:
        return {
            "model": model.state_dict(),
            "backbone": model.backbone.state_dict(),
            "arch": arch,
            "in_channels": int(images.shape[3]),  # more than preprocess's with a heatmap channel
            "preprocess": spec.to_dict(),
            "method": method,
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
        epochs=epochs,
        start_epoch=start_epoch,
        steps=steps,
        step=step,
        evaluate=None,
        state_fn=state,
        seed=seed + 7_777 * ctx.rank,  # per-rank augmentation randomness
        progress=ctx.is_main and progress,
        on_epoch_end=on_epoch_end,
        is_main=ctx.is_main,
        reduce=lambda r: distributed.average_scalars(r, device),
    )
    if heatmaps and ctx.is_main:
        n = write_heatmaps(model, faces.images[:heatmap_faces], spec, Path(heatmaps), device)
        log(f"wrote {n} heatmap overlays to {heatmaps}", file=sys.stderr)
    log(
        f"done in {time.time() - t_start:.0f}s -> {run.last} (fer-edge train --init {run.last})",
        file=sys.stderr,
    )
    distributed.shutdown()
    return model


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

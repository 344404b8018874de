"""Structured channel pruning with torch-pruning (DepGraph), iterative prune + fine-tune.

Channels are removed in ``--steps`` equal steps, one at the start of each of the first
``--steps`` epochs, until ``--ratio`` of every prunable layer's channels are gone (L2 magnitude
importance; the classifier head keeps its outputs); the remaining epochs only fine-tune. DepGraph
keeps coupled layers (residual adds, depthwise convs, squeeze-excitation) consistent. The
checkpoint records the narrowed structure, so ``--resume`` and every loader rebuild the pruned
network. Writes OUT/bundle with MACs and parameters before and after.
"""

from __future__ import annotations

import argparse
import sys

import torch

from fer_edge.errors import InputError
from fer_edge.train.model_io import load_model, model_from_state, structure_of

from . import finetune
from .models import model_cost, refuse_valence_arousal


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="float checkpoint, pytorch bundle or 'default'")
    p.add_argument(
        "--ratio", type=float, default=0.5, help="fraction of channels to remove per layer"
    )
    p.add_argument(
        "--steps", type=int, default=4, help="pruning steps (one per epoch, then fine-tuning only)"
    )
    p.add_argument("--round-to", type=int, default=4, help="keep channel counts multiples of this")
    finetune.add_arguments(p, epochs=8, lr=1e-3, out="runs/prune")


def step_ratio(ratio: float, steps: int, k: int) -> float:
    """Fraction of the current channels to remove at step ``k`` (1-based) so that after step k
    a fraction ``ratio * k / steps`` of the original channels is gone."""
    before, after = 1 - ratio * (k - 1) / steps, 1 - ratio * k / steps
    return 1 - after / before


def prune_step(
    model: torch.nn.Module, ratio: float, example: torch.Tensor, round_to: int | None
) -> None:
    """Remove ``ratio`` of the channels of every prunable layer in place."""
    import torch_pruning as tp

    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[model.head],
        round_to=round_to,
    )
    pruner.step()
    model.feat_dim = model.head.in_features
    model.backbone.out_dim = model.head.in_features


def prune(args: argparse.Namespace):
    """Prune and fine-tune as ``args`` says; returns the pruned bundle."""
    if not 0 < args.ratio < 1:
        raise InputError(f"--ratio must be in (0, 1), got {args.ratio}")
    if not 1 <= args.steps <= args.epochs:
        raise InputError(
            f"--steps must be between 1 and --epochs ({args.epochs}), got {args.steps}"
        )
    src = load_model(args.model)
    if src.kind == "qat":
        raise InputError("prune a float model; quantise after pruning")
    refuse_valence_arousal(src, args.model, "prune")
    spec, labels = src.spec, src.labels
    config = {
        "method": "prune",
        "arch": src.state["arch"],
        "model": str(args.model),
        "ratio": args.ratio,
        "steps": args.steps,
        "size": spec.size,
        "channels": spec.channels,
    }
    ft = finetune.Finetune(args, config, spec)
    torch.manual_seed(args.seed)
    model = src.model.to(ft.device)
    before = model_cost(model, spec)
    done = 0  # pruning steps applied to ``model``
    if ft.resume_state is not None:
        model = model_from_state(ft.resume_state).to(ft.device)
        done = int(ft.resume_state["prune_steps"])
    example = torch.zeros(1, spec.channels, spec.size, spec.size, device=ft.device)
    opt, sched = ft.optimizer(model.parameters())
    if ft.resume_state is not None:
        opt.load_state_dict(ft.resume_state["optimizer"])
        sched.load_state_dict(ft.resume_state["scheduler"])

    def on_epoch_start(epoch: int) -> None:
        nonlocal done, opt, sched
        if epoch >= args.steps or done > epoch:
            return
        done += 1
        model.eval()
        prune_step(model, step_ratio(args.ratio, args.steps, done), example, args.round_to)
        prev = sched.state_dict()
        opt, sched = ft.optimizer(model.parameters())  # parameter shapes changed
        sched.load_state_dict(prev)
        for group, lr in zip(opt.param_groups, sched.get_last_lr(), strict=True):
            group["lr"] = lr
        cost = model_cost(model, spec)
        print(
            f"pruning step {done}/{args.steps}: {cost['params']:,} params, {cost['macs']:,} MACs",
            file=sys.stderr,
        )

    def step(idx, g):
        model.train()
        x, y = ft.batch(idx, g)
        with ft.autocast():
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        return {"loss": ft.update(loss, opt, sched)}

    def state(epoch: int) -> dict:
        return {
            "model": model.state_dict(),
            "structure": structure_of(model),
            "arch": src.state["arch"],
            "num_classes": len(labels),
            "in_channels": spec.channels,
            "labels": list(labels),
            "preprocess": spec.to_dict(),
            "epoch": epoch,
            "prune_steps": done,
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "config": ft.config,
        }

    ft.fit(step, state, lambda e: ft.evaluate(model), on_epoch_start=on_epoch_start)
    after = model_cost(model, spec)
    val = ft.evaluate(model)
    metrics = {
        "val": {"accuracy": val["val_accuracy"], "macro_f1": val["val_macro_f1"]},
        "before": before,
        "after": after,
        **after,
    }
    b = ft.save_bundle(state(args.epochs - 1), metrics)
    print(
        f"pruned: params {before['params']:,} -> {after['params']:,}, MACs {before['macs']:,} -> "
        f"{after['macs']:,}, val accuracy {val['val_accuracy']:.4f} -> {b.root}",
        file=sys.stderr,
    )
    return b


def run(args: argparse.Namespace) -> int:
    prune(args)
    return 0

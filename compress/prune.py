"""Structured channel pruning with torch-pruning (DepGraph), iterative prune + fine-tune:
:func:`prune`, the library side of ``fer-edge prune`` (whose ``--help`` describes the schedule).
The checkpoint records the narrowed structure, so resume and every loader rebuild the pruned
network; OUT/bundle holds MACs and parameters before and after.
"""

from __future__ import annotations

import os
import sys

import torch

from fer_edge.bundle import Bundle
from fer_edge.errors import InputError
from fer_edge.train.model_io import load_model, model_from_state, structure_of

from . import finetune
from .balance import adjusted_cross_entropy, carried_logit_adjust
from .models import model_cost, refuse_valence_arousal


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


def prune(
    *,
    model: str | os.PathLike,
    data: str | os.PathLike,
    ratio: float = 0.5,
    steps: int = 4,
    round_to: int = 4,
    epochs: int = 8,
    lr: float = 1e-3,
    out: str | os.PathLike = "runs/prune",
    **options,
) -> Bundle:
    """Prune ``model`` (a float checkpoint, a pytorch bundle or ``default``) and fine-tune it;
    returns the pruned bundle (OUT/bundle).

    The arguments are ``fer-edge prune``'s options (see its ``--help``); ``options`` are the
    fine-tuning run's, as for :func:`fer_edge.compress.distill.distill`.
    """
    if not 0 < ratio < 1:
        raise InputError(f"--ratio must be in (0, 1), got {ratio}")
    if not 1 <= steps <= epochs:
        raise InputError(f"--steps must be between 1 and --epochs ({epochs}), got {steps}")
    src = load_model(model)
    if src.kind == "qat":
        raise InputError("prune a float model; quantise after pruning")
    refuse_valence_arousal(src, model, "prune")
    spec, labels = src.spec, src.labels
    config = {
        "method": "prune",
        "arch": src.state["arch"],
        "model": str(model),
        "ratio": ratio,
        "steps": steps,
    }
    ft = finetune.Finetune(config, spec, data=data, epochs=epochs, lr=lr, out=out, **options)
    net = src.model.to(ft.device)
    # fine-tuning keeps the class balance the model was trained with (fer_edge.compress.balance)
    carried, log_prior = carried_logit_adjust(src.state, ft.labels, len(labels))
    before = model_cost(net, spec)
    done = 0  # pruning steps applied to ``net``
    if ft.resume_state is not None:
        net = model_from_state(ft.resume_state).to(ft.device)
        done = int(ft.resume_state["prune_steps"])
    example = torch.zeros(1, spec.channels, spec.size, spec.size, device=ft.device)
    opt, sched = ft.optimizer([net])
    if ft.resume_state is not None:
        opt.load_state_dict(ft.resume_state["optimizer"])
        sched.load_state_dict(ft.resume_state["scheduler"])

    def on_epoch_start(epoch: int) -> None:
        nonlocal done, opt, sched
        if epoch >= steps or done > epoch:
            return
        done += 1
        net.eval()
        prune_step(net, step_ratio(ratio, steps, done), example, round_to)
        prev = sched.state_dict()
        opt, sched = ft.optimizer([net])  # parameter shapes changed
        sched.load_state_dict(prev)
        for group, group_lr in zip(opt.param_groups, sched.get_last_lr(), strict=True):
            group["lr"] = group_lr
        cost = model_cost(net, spec)
        print(
            f"pruning step {done}/{steps}: {cost['params']:,} params, {cost['macs']:,} MACs",
            file=sys.stderr,
        )

    def step(idx, g):
        net.train()
        x, y = ft.batch(idx, g)
        with ft.autocast():
            logits = net(x)
        loss = adjusted_cross_entropy(logits, y, carried, log_prior)
        return {"loss": ft.update(loss, opt, sched)}

    def state(epoch: int) -> dict:
        return {
            "model": net.state_dict(),
            "structure": structure_of(net),
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
            "logit_adjust": carried,
        }

    ft.fit(step, state, lambda e: ft.evaluate(net), on_epoch_start=on_epoch_start)
    after = model_cost(net, spec)
    val = ft.evaluate(net)
    metrics = {
        "val": {"accuracy": val["val_accuracy"], "macro_f1": val["val_macro_f1"]},
        "before": before,
        "after": after,
        **after,
    }
    b = ft.save_bundle(state(epochs - 1), metrics)
    print(
        f"pruned: params {before['params']:,} -> {after['params']:,}, MACs {before['macs']:,} -> "
        f"{after['macs']:,}, val accuracy {val['val_accuracy']:.4f} -> {b.root}",
        file=sys.stderr,
    )
    return b

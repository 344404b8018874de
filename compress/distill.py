"""Knowledge distillation of a trained teacher into a small student.

Loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, label), with
optional feature distillation (--feat-weight): a linear projection of the student's pooled
features is pulled towards the teacher's (cosine distance). Writes a checkpoint every epoch
(``--resume`` continues) and the final student as a pytorch bundle in OUT/bundle with its
validation accuracy, parameters and MACs.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import nn

from fer_edge.errors import InputError
from fer_edge.train.nets import ARCHS, build

from . import finetune
from .models import load_model, model_cost, refuse_valence_arousal

MAX_STUDENT_PARAMS = 1_500_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher", required=True, help="teacher checkpoint, pytorch bundle or 'default'"
    )
    p.add_argument(
        "--student", default="compact_cnn", choices=sorted(ARCHS), help="student architecture"
    )
    p.add_argument(
        "--temperature", type=float, default=4.0, help="softmax temperature T of the KL term"
    )
    p.add_argument(
        "--alpha", type=float, default=0.7, help="weight of the KL term (1 - alpha for CE)"
    )
    p.add_argument(
        "--feat-weight", type=float, default=0.0, help="weight of feature distillation (0 = off)"
    )
    p.add_argument(
        "--allow-large",
        action="store_true",
        help=f"allow students above {MAX_STUDENT_PARAMS:,} parameters",
    )
    finetune.add_arguments(p, epochs=30, lr=3e-3, out="runs/distill")


def kd_loss(
    student_logits, teacher_logits, labels, temperature: float, alpha: float
) -> torch.Tensor:
    """Hinton distillation: soft-target KL at temperature T (scaled by T^2) plus hard-label CE."""
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student_logits / t, 1),
        F.log_softmax(teacher_logits / t, 1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * t * t * kl + (1 - alpha) * F.cross_entropy(student_logits, labels)


def distill(args: argparse.Namespace):
    """Run distillation as ``args`` says; returns the student bundle."""
    if not 0 <= args.alpha <= 1 or args.temperature <= 0:
        raise InputError("--alpha must be in [0, 1] and --temperature positive")
    teacher = load_model(args.teacher)
    refuse_valence_arousal(teacher, args.teacher, "distill")
    if teacher.kind == "qat":
        raise InputError("a QAT model cannot teach; pass its float source")
    spec, labels = teacher.spec, teacher.labels
    config = {
        "method": "distill",
        "arch": args.student,
        "teacher": str(args.teacher),
        "temperature": args.temperature,
        "alpha": args.alpha,
        "feat_weight": args.feat_weight,
        "size": spec.size,
        "channels": spec.channels,
    }
    ft = finetune.Finetune(args, config, spec)
    torch.manual_seed(args.seed)
    t_net = teacher.model.to(ft.device).eval()
    student = build(args.student, len(labels), spec.channels).to(ft.device)
    cost = model_cost(student, spec)
    if cost["params"] > MAX_STUDENT_PARAMS and not args.allow_large:
        raise InputError(
            f"student {args.student} has {cost['params']:,} parameters, above {MAX_STUDENT_PARAMS:,} (pass --allow-large)"
        )
    proj = nn.Linear(student.feat_dim, t_net.feat_dim).to(ft.device)
    opt, sched = ft.optimizer([*student.parameters(), *proj.parameters()])
    if ft.resume_state is not None:
        student.load_state_dict(ft.resume_state["model"])
        proj.load_state_dict(ft.resume_state["projection"])
        opt.load_state_dict(ft.resume_state["optimizer"])
        sched.load_state_dict(ft.resume_state["scheduler"])

    def step(idx, g):
        student.train()
        x, y = ft.batch(idx, g)
        with torch.no_grad():
            t_feat = t_net.embed(x)
            t_logits = t_net.head(t_feat)
        s_feat = student.embed(x)
        s_logits = student.head(student.dropout(s_feat))
        loss = kd_loss(s_logits, t_logits, y, args.temperature, args.alpha)
        parts = {}
        if args.feat_weight > 0:
            feat = 1 - F.cosine_similarity(proj(s_feat), t_feat, dim=1).mean()
            loss = loss + args.feat_weight * feat
            parts["feat_loss"] = float(feat.item())
        return {"loss": ft.update(loss, opt, sched), **parts}

    def state(epoch: int) -> dict:
        return {
            "model": student.state_dict(),
            "arch": args.student,
            "num_classes": len(labels),
            "in_channels": spec.channels,
            "labels": list(labels),
            "preprocess": spec.to_dict(),
            "epoch": epoch,
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "projection": proj.state_dict(),
            "config": ft.config,
        }

    ft.fit(step, state, lambda e: ft.evaluate(student))
    val = ft.evaluate(student)
    teacher_val = ft.evaluate(t_net)
    metrics = {
        "val": {"accuracy": val["val_accuracy"], "macro_f1": val["val_macro_f1"]},
        "teacher_val": {"accuracy": teacher_val["val_accuracy"]},
        **cost,
    }
    b = ft.save_bundle(state(args.epochs - 1), metrics)
    print(
        f"student {args.student}: {cost['params']:,} params, {cost['macs']:,} MACs, val accuracy "
        f"{val['val_accuracy']:.4f} (teacher {teacher_val['val_accuracy']:.4f}) -> {b.root}",
        file=sys.stderr,
    )
    return b


def run(args: argparse.Namespace) -> int:
    distill(args)
    return 0

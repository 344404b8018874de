"""Knowledge distillation of a trained teacher into a small student.

Loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, label), with
optional feature distillation (--feat-weight): a linear projection of the student's pooled
features is pulled towards the teacher's (cosine distance). Several --teacher give an ensemble
(the mean of their logits; feature distillation follows the first), --teacher-tta averages each
teacher with the flipped face, and --logit-adjust TAU trains the student's logits plus
TAU * log(class prior) (Menon et al., 2021), so its raw logits are balanced across classes
(disgust is 1.5% of FER-2013 train). Writes a checkpoint every epoch
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
from fer_edge.train.model_io import load_model
from fer_edge.train.nets import ARCHS, build

from . import finetune
from .models import model_cost, refuse_valence_arousal

MAX_STUDENT_PARAMS = 1_500_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher",
        required=True,
        action="append",
        help="teacher checkpoint, pytorch bundle or 'default' (repeat for an ensemble)",
    )
    p.add_argument(
        "--teacher-tta",
        action="store_true",
        help="soft targets averaged with the teacher's logits of the flipped face",
    )
    p.add_argument(
        "--logit-adjust",
        type=float,
        default=0.0,
        metavar="TAU",
        help="train logits + TAU * log(class prior) so the raw logits are balanced (0 = off)",
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
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
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
    teachers = [load_model(t) for t in args.teacher]
    for teacher, path in zip(teachers, args.teacher, strict=True):
        refuse_valence_arousal(teacher, path, "distill")
        if teacher.kind == "qat":
            raise InputError(f"{path}: a QAT model cannot teach; pass its float source")
        if (teacher.spec, tuple(teacher.labels)) != (teachers[0].spec, tuple(teachers[0].labels)):
            raise InputError(f"{path}: an ensemble's teachers must share labels and preprocessing")
    spec, labels = teachers[0].spec, teachers[0].labels
    config = {
        "method": "distill",
        "arch": args.student,
        "teacher": [str(t) for t in args.teacher],
        "teacher_tta": args.teacher_tta,
        "logit_adjust": args.logit_adjust,
        "temperature": args.temperature,
        "alpha": args.alpha,
        "feat_weight": args.feat_weight,
        "size": spec.size,
        "channels": spec.channels,
    }
    ft = finetune.Finetune(args, config, spec)
    torch.manual_seed(args.seed)
    t_nets = [t.model.to(ft.device).eval() for t in teachers]
    t_net = t_nets[0]  # the one feature distillation follows
    counts = torch.bincount(ft.labels[ft.labels >= 0], minlength=len(labels)).float()
    log_prior = torch.log((counts + 1) / (counts + 1).sum()).to(ft.device)
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

    def soft_targets(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ensemble logits, the first teacher's pooled features) of a batch."""
        views = [x, x.flip(3)] if args.teacher_tta else [x]
        logits, t_feat = [], None
        for net in t_nets:
            for v in views:
                feat = net.embed(v)
                t_feat = feat if t_feat is None else t_feat
                logits.append(net.head(feat).float())
        return torch.stack(logits).mean(0), t_feat

    def step(idx, g):
        student.train()
        x, y = ft.batch(idx, g)
        with ft.autocast():
            with torch.no_grad():
                t_logits, t_feat = soft_targets(x)
            s_feat = student.embed(x)
            s_logits = student.head(student.dropout(s_feat)) + args.logit_adjust * log_prior
        loss = kd_loss(s_logits, t_logits, y, args.temperature, args.alpha)
        parts = {}
        if args.feat_weight > 0:
            feat = 1 - F.cosine_similarity(proj(s_feat.float()), t_feat.float(), dim=1).mean()
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
    teacher_val = ft.evaluate(t_net)  # the first teacher
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

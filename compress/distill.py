"""Knowledge distillation of a trained teacher (or an ensemble) into a small student:
:func:`distill`, the library side of ``fer-edge distill`` (whose ``--help`` describes the loss:
Hinton KL plus cross-entropy, optional feature distillation, teacher TTA, logit adjustment).
Resumable; writes the student as a pytorch bundle in OUT/bundle with its validation accuracy,
parameters and MACs.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fer_edge import atomic
from fer_edge.bundle import Bundle
from fer_edge.data import cache_dir
from fer_edge.errors import InputError
from fer_edge.preprocess import TTA_MODES
from fer_edge.train import engine
from fer_edge.train.augment import to_input
from fer_edge.train.model_io import checkpoint_path, load_model
from fer_edge.train.nets import build
from fer_edge.train.predictor import predict_logits, tta_views

from . import finetune
from .balance import choose_posthoc_tau, class_log_prior, fold_into_head
from .models import model_cost, refuse_valence_arousal

MAX_STUDENT_PARAMS = 1_500_000
# where the teacher's soft targets come from: "online" runs the teachers on each augmented batch
# the student sees; "clean" runs them once, before training, on the unaugmented training faces,
# so the student learns to give a degraded face (--augment camera) the teacher's answer for the
# clean one, and an epoch costs the student's step only
TEACHER_TARGETS = ("online", "clean")


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


def clean_targets_key(ft: finetune.Finetune, teachers: list, teacher_tta: str) -> str:
    """What the clean soft targets depend on: the training faces, each teacher's weights file,
    the TTA views and the precision the teachers run at (bf16 where training autocasts)."""
    h = hashlib.sha256(ft.images.cpu().numpy().tobytes())
    for t in teachers:
        h.update(hashlib.sha256(checkpoint_path(t).read_bytes()).digest())
    h.update(f"{teacher_tta}|{engine.amp_dtype(ft.device, ft.amp)}|{ft.spec.to_dict()}".encode())
    return h.hexdigest()[:32]


def cached_clean_soft_targets(
    ft: finetune.Finetune, key: str, compute: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """``compute()`` once per ``key``: kept in the fer-edge cache, because scoring every training
    face through an ensemble with TTA costs minutes on a CPU (ten crops of a wide teacher: more
    than the student's training), and every ablation run and resume of a distillation would pay
    it again. A damaged or foreign cache entry is recomputed."""
    path = cache_dir() / f"teacher-targets-{key}.npy"
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape[0] == len(ft.images) and cached.dtype == np.float32:
                print(f"teacher targets: cached {path}", file=sys.stderr)
                return torch.from_numpy(cached).to(ft.device)
        except (OSError, ValueError):
            pass
    targets = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, targets.cpu().numpy().astype(np.float32), allow_pickle=False)
    except OSError:
        pass  # caching is an optimisation; a read-only home must not stop distillation
    return targets


@torch.no_grad()
def clean_soft_targets(ft: finetune.Finetune, soft_targets, batch_size: int = 256) -> torch.Tensor:
    """The teachers' logits of every unaugmented training face (N, K), computed once."""
    starts = range(0, len(ft.images), batch_size)
    bar, out = engine.Progress(len(starts), "teacher targets", ft.progress), []
    for i in starts:
        x = to_input(ft.images[i : i + batch_size], ft.spec).contiguous(
            memory_format=torch.channels_last
        )
        with ft.autocast():
            out.append(soft_targets(x)[0].float())
        bar.update()
    bar.close(f"{len(ft.images)} faces")
    return torch.cat(out)


def distill(
    *,
    teacher: str | os.PathLike | list[str | os.PathLike],
    data: str | os.PathLike,
    student: str = "compact_cnn",
    teacher_tta: str = "none",
    teacher_targets: str = "online",
    logit_adjust: float = 0.0,
    posthoc_balance: bool = False,
    temperature: float = 4.0,
    alpha: float = 0.7,
    feat_weight: float = 0.0,
    allow_large: bool = False,
    epochs: int = 30,
    lr: float = 3e-3,
    out: str | os.PathLike = "runs/distill",
    **options,
) -> Bundle:
    """Distil ``teacher`` (a checkpoint, a pytorch bundle or ``default``; a list is an ensemble)
    into a ``student`` network; returns the student bundle (OUT/bundle).

    The arguments are ``fer-edge distill``'s options (see its ``--help``); ``options`` are the
    fine-tuning run's (:class:`~fer_edge.compress.finetune.Finetune`: ``batch_size``,
    ``weight_decay``, ``augment``, ``seed``, ``resume``, ``device``, ``threads``, ``amp``,
    ``progress``, the splits, ``limit_per_class``).
    """
    if not 0 <= alpha <= 1 or temperature <= 0:
        raise InputError("--alpha must be in [0, 1] and --temperature positive")
    if teacher_tta not in TTA_MODES:
        raise InputError(
            f"--teacher-tta must be one of {', '.join(TTA_MODES)}, got {teacher_tta!r}"
        )
    if teacher_targets not in TEACHER_TARGETS:
        raise InputError(
            f"--teacher-targets must be one of {', '.join(TEACHER_TARGETS)}, got {teacher_targets!r}"
        )
    if teacher_targets == "clean" and feat_weight > 0:
        raise InputError("--feat-weight needs --teacher-targets online (features of the same view)")
    teachers_given = [teacher] if isinstance(teacher, str | os.PathLike) else list(teacher)
    teachers = [load_model(t) for t in teachers_given]
    for loaded, path in zip(teachers, teachers_given, strict=True):
        refuse_valence_arousal(loaded, path, "distill")
        if loaded.kind == "qat":
            raise InputError(f"{path}: a QAT model cannot teach; pass its float source")
        if (loaded.spec, tuple(loaded.labels)) != (teachers[0].spec, tuple(teachers[0].labels)):
            raise InputError(f"{path}: an ensemble's teachers must share labels and preprocessing")
    spec, labels = teachers[0].spec, teachers[0].labels
    config = {
        "method": "distill",
        "arch": student,
        "teacher": [str(t) for t in teachers_given],
        "teacher_tta": teacher_tta,
        "teacher_targets": teacher_targets,
        "logit_adjust": logit_adjust,
        "posthoc_balance": posthoc_balance,
        "temperature": temperature,
        "alpha": alpha,
        "feat_weight": feat_weight,
    }
    ft = finetune.Finetune(config, spec, data=data, epochs=epochs, lr=lr, out=out, **options)
    t_nets = [t.model.to(ft.device).eval() for t in teachers]
    t_net = t_nets[0]  # the one feature distillation follows
    log_prior = class_log_prior(ft.labels, len(labels)).to(ft.device)
    carried_adjust = logit_adjust  # what the raw logits carry; post-hoc balance adds to it
    net = build(student, len(labels), spec.channels).to(ft.device)
    cost = model_cost(net, spec)
    if cost["params"] > MAX_STUDENT_PARAMS and not allow_large:
        raise InputError(
            f"student {student} has {cost['params']:,} parameters, above {MAX_STUDENT_PARAMS:,} (pass --allow-large)"
        )
    proj = nn.Linear(net.feat_dim, t_net.feat_dim).to(ft.device)
    opt, sched = ft.optimizer([net, proj])
    if ft.resume_state is not None:
        net.load_state_dict(ft.resume_state["model"])
        proj.load_state_dict(ft.resume_state["projection"])
        opt.load_state_dict(ft.resume_state["optimizer"])
        sched.load_state_dict(ft.resume_state["scheduler"])

    def soft_targets(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ensemble logits, the first teacher's pooled features) of a batch."""
        logits, t_feat = [], None
        for t in t_nets:
            for v in tta_views(x, teacher_tta):
                feat = t.embed(v)
                t_feat = feat if t_feat is None else t_feat
                logits.append(t.head(feat).float())
        return torch.stack(logits).mean(0), t_feat

    clean_logits = None
    if teacher_targets == "clean":
        clean_logits = cached_clean_soft_targets(
            ft,
            clean_targets_key(ft, teachers_given, teacher_tta),
            lambda: clean_soft_targets(ft, soft_targets),
        )

    def step(idx, g):
        net.train()
        x, y = ft.batch(idx, g)
        with ft.autocast():
            if clean_logits is None:
                with torch.no_grad():
                    t_logits, t_feat = soft_targets(x)
            else:
                t_logits = clean_logits[idx.to(ft.device)]
            s_feat = net.embed(x)
            s_logits = net.head(net.dropout(s_feat)) + logit_adjust * log_prior
        loss = kd_loss(s_logits, t_logits, y, temperature, alpha)
        parts = {}
        if feat_weight > 0:
            feat = 1 - F.cosine_similarity(proj(s_feat.float()), t_feat.float(), dim=1).mean()
            loss = loss + feat_weight * feat
            parts["feat_loss"] = float(feat.item())
        return {"loss": ft.update(loss, opt, sched), **parts}

    def state(epoch: int) -> dict:
        return {
            "model": net.state_dict(),
            "arch": student,
            "num_classes": len(labels),
            "in_channels": spec.channels,
            "labels": list(labels),
            "preprocess": spec.to_dict(),
            "epoch": epoch,
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "projection": proj.state_dict(),
            "config": ft.config,
            "logit_adjust": carried_adjust,
        }

    ft.fit(step, state, lambda e: ft.evaluate(net))
    balance = {}
    if posthoc_balance:
        net.eval()
        val_logits = predict_logits(net, ft.val.images, spec, ft.device)[:, : len(labels)]
        tau, search = choose_posthoc_tau(
            val_logits, ft.val.labels, log_prior.cpu().numpy(), list(ft.val.label_names)
        )
        fold_into_head(net.head, tau, log_prior)
        carried_adjust = logit_adjust + tau
        balance = {"posthoc_balance": {"tau": tau, "search": search}}
        print(
            "post-hoc balance on val (tau: accuracy, macro-F1, lowest recall): "
            + ", ".join(
                f"{r['tau']}: {r['accuracy']:.4f} {r['macro_f1']:.4f} {r['lowest_recall']:.2f}"
                for r in search
            )
            + f" -> tau {tau}",
            file=sys.stderr,
        )
    val = ft.evaluate(net)
    teacher_val = ft.evaluate(t_net)  # the first teacher
    metrics = {
        "val": {"accuracy": val["val_accuracy"], "macro_f1": val["val_macro_f1"]},
        "teacher_val": {"accuracy": teacher_val["val_accuracy"]},
        **balance,
        **cost,
    }
    b = ft.save_bundle(state(ft.epochs - 1), metrics)
    print(
        f"student {student}: {cost['params']:,} params, {cost['macs']:,} MACs, val accuracy "
        f"{val['val_accuracy']:.4f} (teacher {teacher_val['val_accuracy']:.4f}) -> {b.root}",
        file=sys.stderr,
    )
    return b

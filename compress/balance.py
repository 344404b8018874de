"""Class balance by logit adjustment (Menon et al., "Long-tail learning via logit adjustment",
ICLR 2021): the class prior every compression stage uses, and the post-hoc form, which shifts a
trained network's head bias by -TAU * log(prior) with TAU chosen on labelled validation faces.

A model state's ``logit_adjust`` is the TAU its raw logits carry in all (training-time plus
post-hoc): a later fine-tuning stage (QAT, pruning) adds TAU * log(prior) to the logits in its
loss, as distillation did, so that training on the imbalanced labels does not undo the balance.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fer_edge.metrics import classification_report

# TAU values the post-hoc search tries: 0 (no change) to 2 (past the balanced-error optimum of 1)
POSTHOC_TAUS = tuple(round(0.1 * i, 1) for i in range(21))


def class_log_prior(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """log of the training labels' class frequencies, add-one smoothed so that a class without
    faces gets a finite value; unlabelled faces (label < 0) are left out."""
    counts = torch.bincount(labels[labels >= 0], minlength=num_classes).float()
    return torch.log((counts + 1) / (counts + 1).sum())


def choose_posthoc_tau(
    logits: np.ndarray, labels: np.ndarray, log_prior: np.ndarray, label_names: list[str]
) -> tuple[float, list[dict]]:
    """The TAU of :data:`POSTHOC_TAUS` whose adjusted logits ``logits - TAU * log_prior`` give
    the highest macro-F1 on ``labels`` (the smallest TAU on a tie), and the whole search as rows
    of tau, accuracy, macro-F1, mean and lowest class recall. Macro-F1 is the objective because
    it charges both for the common classes' accuracy and for the rare ones' misses."""
    rows = []
    for tau in POSTHOC_TAUS:
        rep = classification_report(labels, logits - tau * log_prior, label_names)
        recalls = [rep["per_class"][name]["recall"] for name in label_names]
        rows.append(
            {
                "tau": tau,
                "accuracy": rep["accuracy"],
                "macro_f1": rep["macro_f1"],
                "mean_recall": float(np.mean(recalls)),
                "lowest_recall": float(min(recalls)),
            }
        )
    best = max(rows, key=lambda r: (r["macro_f1"], -r["tau"]))
    return best["tau"], rows


def fold_into_head(head: nn.Linear, tau: float, log_prior: torch.Tensor) -> None:
    """Shift the class logits of ``head`` by -tau * log_prior, in its bias, so every export and
    runtime gets the adjustment with no change to them. Outputs past the classes (valence and
    arousal) are left alone."""
    with torch.no_grad():
        k = len(log_prior)
        head.bias[:k] -= tau * log_prior.to(head.bias.device, head.bias.dtype)


def carried_logit_adjust(
    state: dict, train_labels: torch.Tensor, num_classes: int
) -> tuple[float, torch.Tensor]:
    """(the TAU a model state's raw logits carry, 0 without adjustment; the class log prior of
    the training labels, on their device): what a fine-tuning stage's
    :func:`adjusted_cross_entropy` takes to keep the balance."""
    tau = float(state.get("logit_adjust", 0.0))
    return tau, class_log_prior(train_labels, num_classes).to(train_labels.device)


def adjusted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, tau: float, log_prior: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of ``logits + tau * log_prior``: fine-tuning on the imbalanced labels with
    it leaves raw logits that carry ``tau`` (plain cross-entropy at ``tau == 0``)."""
    k = len(log_prior)
    return torch.nn.functional.cross_entropy(logits[:, :k].float() + tau * log_prior, labels)

"""Knowledge distillation of a trained teacher into a small student.

Loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, label), with
optional feature distillation (--feat-weight): a linear projection of the student's pooled
features is pulled towards the teacher's (cosine distance). Several --teacher give an ensemble
(the mean of their logits; feature distillation follows the first), --teacher-tta averages each
teacher over the flipped face or ten crops, --teacher-targets clean scores the unaugmented faces
once instead of every augmented batch, and --logit-adjust TAU trains the student's logits plus
TAU * log(class prior) (Menon et al., 2021), so its raw logits are balanced across classes
(disgust is 1.5% of FER-2013 train); --posthoc-balance instead shifts the trained student's head
bias by -TAU * log(class prior), with TAU chosen on the validation faces for macro-F1. Later
QAT and pruning keep either adjustment. Writes a checkpoint every epoch
(``--resume`` continues) and the final student as a pytorch bundle in OUT/bundle with its
validation accuracy, parameters and MACs. From Python:
``fer_edge.compress.distill.distill(teacher=..., data=..., student=...)``.
"""

from __future__ import annotations

import argparse

from fer_edge.compress import distill
from fer_edge.preprocess import TTA_MODES
from fer_edge.train.nets import ARCHS

from .options import add_finetune_arguments, keyword_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher",
        required=True,
        action="append",
        help="teacher checkpoint, pytorch bundle or 'default' (repeat for an ensemble)",
    )
    p.add_argument(
        "--teacher-tta",
        nargs="?",
        const="flip",
        default="none",
        choices=TTA_MODES,
        help="soft targets averaged over test-time views of each face: the face and its mirror "
        "image (--teacher-tta, or flip), or ten crops (ten-crop)",
    )
    p.add_argument(
        "--teacher-targets",
        default="online",
        choices=distill.TEACHER_TARGETS,
        help="online: the teachers score each augmented batch the student sees; clean: they "
        "score every unaugmented training face once, before training, so the student learns the "
        "clean face's answer for its augmented view and an epoch costs the student's step only",
    )
    p.add_argument(
        "--logit-adjust",
        type=float,
        default=0.0,
        metavar="TAU",
        help="train logits + TAU * log(class prior) so the raw logits are balanced (0 = off)",
    )
    p.add_argument(
        "--posthoc-balance",
        action="store_true",
        help="after training, shift the head bias by -TAU * log(class prior), TAU in 0..2 chosen "
        "on the validation faces for macro-F1 (the search is printed and kept in the bundle)",
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
        help=f"allow students above {distill.MAX_STUDENT_PARAMS:,} parameters",
    )
    add_finetune_arguments(p, epochs=30, lr=3e-3, out="runs/distill")


def run(args: argparse.Namespace) -> int:
    distill.distill(**keyword_arguments(args))
    return 0

"""What supervised training minimises: plain cross-entropy, the interface every
``method=``/``--method`` objective follows, and the registry of those methods.

A method file (``train/methods/mim_spl.py``, ``avce.py``) defines ``HELP``, ``DEFAULTS`` (its
settings) and an ``Objective`` built like :class:`CrossEntropy`, for supervised methods that need
more: auxiliary heads, per-epoch relabelling, regression targets.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fer_edge.data import FaceDataset
from fer_edge.errors import InputError
from fer_edge.metrics import classification_report
from fer_edge.preprocess import PreprocessSpec

from .predictor import predict_logits

# method name -> module holding its ``Objective``, ``HELP`` and ``DEFAULTS``
OBJECTIVES = {
    "ce": __name__,
    "mim-spl": f"{__package__}.methods.mim_spl",
    "avce": f"{__package__}.methods.avce",
}


def objective_module(name: str):
    if name not in OBJECTIVES:
        raise InputError(f"unknown --method {name!r}; choose from {', '.join(OBJECTIVES)}")
    return importlib.import_module(OBJECTIVES[name])


def describe() -> str:
    """One entry per method with its settings, for ``--help``."""
    lines = []
    for name in OBJECTIVES:
        module = objective_module(name)
        listed = " ".join(f"{k}={v}" for k, v in module.DEFAULTS.items()) or "-"
        lines.append(f"  {name:<8} {module.HELP}\n{'':11}settings: {listed}")
    return "\n".join(lines)


def evaluate_split(model, ds: FaceDataset, spec, device) -> dict:
    logits = predict_logits(model, ds.images, spec, device)[:, : len(ds.label_names)]
    rep = classification_report(ds.labels, logits, ds.label_names)
    loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(ds.labels)).item())
    return {"val_loss": loss, "val_accuracy": rep["accuracy"], "val_macro_f1": rep["macro_f1"]}


HELP = "cross-entropy on the labels (--label-smoothing)"
DEFAULTS: dict = {}


@dataclass(frozen=True)
class ObjectiveSetup:
    """What an objective is built with besides the network, the data and its settings."""

    spec: PreprocessSpec
    label_smoothing: float
    device: torch.device
    # the training labels before ``label_noise``: for diagnostics only, never for training
    true_labels: np.ndarray


class CrossEntropy:
    """The default objective, and the interface every method's ``Objective`` follows.

    Built after the network, before the first epoch (so it can refuse data it cannot use), with
    the validation faces and the training faces (labels possibly noised by ``label_noise``).
    ``extra`` holds trainable modules besides the network (auxiliary heads, decoders): they join
    the optimizer and the checkpoint, not the bundle. ``select`` names the validation metric
    (higher is better) that picks the epoch saved to OUT/best."""

    select = "val_accuracy"
    mixes = True  # takes --mixup/--cutmix batches (mixed_loss); objectives with own targets do not

    def __init__(
        self,
        net: torch.nn.Module,
        train: FaceDataset,
        val: FaceDataset,
        cfg: dict,
        setup: ObjectiveSetup,
    ):
        self.net, self.smoothing = net, setup.label_smoothing
        self.labels = torch.from_numpy(train.labels).to(setup.device)
        self.extra = torch.nn.ModuleDict()

    @staticmethod
    def num_outputs(num_classes: int) -> int:
        """Width of the network's head for ``num_classes`` classes."""
        return num_classes

    def loss(self, x: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Augmented faces ``x`` of training rows ``idx`` -> {"loss": ..., other parts}."""
        logits = self.net(x)
        return {
            "loss": F.cross_entropy(
                logits, self.labels[idx], ignore_index=-1, label_smoothing=self.smoothing
            )
        }

    def mixed_loss(
        self, x: torch.Tensor, idx: torch.Tensor, partner: torch.Tensor, lam: float
    ) -> dict[str, torch.Tensor]:
        """The loss of a batch mixed by ``augment.mix_batch``: face i is ``lam`` of face i and
        ``1 - lam`` of face ``partner[i]``, and so is its target. Only the plain cross-entropy
        objective mixes (``mixes``)."""
        logits, y = self.net(x), self.labels[idx]

        def ce(target):
            return F.cross_entropy(logits, target, ignore_index=-1, label_smoothing=self.smoothing)

        return {"loss": lam * ce(y) + (1 - lam) * ce(y[partner.to(y.device)])}

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Work between epochs (re-splitting, relabelling); returns numbers for the log."""
        return {}

    def evaluate(
        self, val: FaceDataset, spec: PreprocessSpec, device, net: torch.nn.Module | None = None
    ) -> dict[str, float]:
        """Validation scores of ``net`` (default: the network being trained; the run passes its
        weight average when it keeps one)."""
        return evaluate_split(net or self.net, val, spec, device)

    def state_dict(self) -> dict:
        """What a resumed run needs besides the weights (e.g. soft labels)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


Objective = CrossEntropy

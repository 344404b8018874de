"""PyTorch models in and out of checkpoints and pytorch bundles, of every kind training and
compression make.

A model state holds :data:`MODEL_STATE_KEYS` (``model``, ``arch``, ``num_classes``,
``in_channels``, ``labels``, ``preprocess``; the checkpoint keys of
:mod:`fer_edge.train.checkpoint`) and, by kind, more:

- float: ``model`` fits ``build(arch)``; with valence and arousal its head has two outputs
  after the class logits (``num_classes == len(labels) + 2``);
- pruned: ``structure``, the channel counts of every conv, BN and linear layer, because
  structured pruning leaves layers narrower than ``build(arch)`` makes them;
- QAT (``kind == "qat"``): ``model`` is the state of the PT2E fake-quantised graph and
  ``source_model`` the float weights it was made from (see :mod:`fer_edge.compress.quantize`).

A pytorch bundle is model.pt (the state, no optimizer or history) plus model.json. Everything
loads with ``weights_only=True``: a structure record is plain ints.
"""

from __future__ import annotations

import io
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fer_edge import bundle as bundle_io
from fer_edge.errors import CheckpointError
from fer_edge.preprocess import PreprocessSpec

from .checkpoint import load_checkpoint
from .nets import build

MODEL_STATE_KEYS = ("model", "arch", "num_classes", "in_channels", "labels", "preprocess")
# What pruned and QAT states add; a float state has none of them.
KIND_STATE_KEYS = ("kind", "structure", "source_model")
# The logit adjustment the raw logits carry (fer_edge.compress.balance), kept by every stage after
MODEL_STATE_EXTRAS = ("logit_adjust",)
# Attributes that fix a layer's tensor shapes; recorded for pruned models.
SHAPE_ATTRS = {
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.BatchNorm2d: ("num_features",),
    nn.Linear: ("in_features", "out_features"),
}


@dataclass
class LoadedModel:
    """A model ready for inference, with what it was trained on."""

    model: nn.Module
    labels: tuple[str, ...]
    spec: PreprocessSpec
    state: dict

    @property
    def kind(self) -> str:
        return self.state.get("kind", "float")


def structure_of(model: nn.Module) -> dict[str, dict[str, int]]:
    """Shape-defining attributes of every conv, BN and linear layer, by module name."""
    out = {}
    for name, m in model.named_modules():
        for cls, attrs in SHAPE_ATTRS.items():
            if isinstance(m, cls):
                out[name] = {a: int(getattr(m, a)) for a in attrs}
    return out


def restore_structure(
    model: nn.Module, structure: dict, weights: dict[str, torch.Tensor]
) -> nn.Module:
    """Narrow ``model``'s layers to ``structure`` and give every parameter and buffer the shape it
    has in ``weights``, so ``load_state_dict(weights)`` fits a pruned network."""
    modules = dict(model.named_modules())
    for name, attrs in structure.items():
        if name not in modules:
            raise CheckpointError(
                f"pruned structure names a layer {name!r} that {model.arch} lacks"
            )
        for a, v in attrs.items():
            setattr(modules[name], a, int(v))
    for key, tensor in weights.items():
        owner, _, leaf = key.rpartition(".")
        m = modules.get(owner)
        if m is None:
            continue  # load_state_dict reports unexpected keys below
        if leaf in m._parameters and m._parameters[leaf] is not None:
            m._parameters[leaf] = nn.Parameter(torch.empty_like(tensor))
        elif leaf in m._buffers and m._buffers[leaf] is not None:
            m._buffers[leaf] = torch.empty_like(tensor)
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        model.feat_dim = head.in_features
        model.backbone.out_dim = head.in_features
    return model


def qat_source_state(state: dict) -> dict:
    """The float (or pruned) state a QAT state was made from."""
    return {**state, "model": state["source_model"], "kind": "float"}


def model_from_state(state: dict) -> nn.Module:
    """The eval-mode network of a float, pruned or QAT model state."""
    if state.get("kind") == "qat":
        # The quantisation library sits above this module (it fine-tunes through the training
        # engine), so it is imported only for the models that need it.
        from fer_edge.compress.quantize import rebuild

        return rebuild(state, model_from_state(qat_source_state(state)))
    model = build(state["arch"], int(state["num_classes"]), int(state["in_channels"]))
    if "structure" in state:
        restore_structure(model, state["structure"], state["model"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        what = (
            "pruned weights do not fit their recorded structure"
            if "structure" in state
            else f"checkpoint weights do not fit architecture {state['arch']!r}"
        )
        raise CheckpointError(f"{what}: {str(e)[:300]}") from None
    return model.eval()


def checkpoint_path(path: str | os.PathLike) -> Path:
    """A checkpoint file from ``default``, a pytorch bundle folder, or a checkpoint path."""
    path = Path(bundle_io.resolve(path, pytorch=True))
    if path.is_dir():
        b = bundle_io.load_bundle(path)
        if b.format != "pytorch":
            raise CheckpointError(
                f"{path} is a {b.format} bundle; PyTorch needs a checkpoint or a pytorch bundle"
            )
        return b.graph
    return path


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Load a float, pruned or QAT model from a checkpoint, a pytorch bundle, or ``default``."""
    state = load_checkpoint(checkpoint_path(path))
    spec = PreprocessSpec.from_dict(state["preprocess"])
    return LoadedModel(model_from_state(state), tuple(state["labels"]), spec, state)


def has_valence_arousal(state: dict) -> bool:
    """Whether a model state's head emits valence and arousal after its class logits."""
    return int(state["num_classes"]) == len(state["labels"]) + 2


def va_meta(state: dict) -> dict:
    """The model.json ``model`` field that tells runtimes about the two extra outputs."""
    return {"valence_arousal": True} if has_valence_arousal(state) else {}


def inference_state(state: dict) -> dict:
    """The part of a training checkpoint a deployed model needs (no optimizer, no history)."""
    missing = [k for k in MODEL_STATE_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"a model state lacks {', '.join(missing)}")
    return {
        k: state[k]
        for k in (*MODEL_STATE_KEYS, *KIND_STATE_KEYS, *MODEL_STATE_EXTRAS)
        if k in state
    }


def git_commit() -> str | None:
    """The source tree's short commit, recorded in every bundle's ``source``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def save_model_bundle(
    out: str | os.PathLike, state: dict, *, metrics: dict, source: dict
) -> bundle_io.Bundle:
    """Write ``state`` (any kind) as a pytorch bundle (model.pt + model.json) atomically."""
    buf = io.BytesIO()
    torch.save(inference_state(state), buf)
    kind = state.get("kind", "float")
    return bundle_io.save_bundle(
        out,
        {"model.pt": buf.getvalue()},
        labels=state["labels"],
        preprocess=PreprocessSpec.from_dict(state["preprocess"]),
        model={
            "format": "pytorch",
            "file": "model.pt",
            "precision": "int8" if kind == "qat" else "fp32",
            "arch": state["arch"],
            # a QAT model made from a pruned one keeps its structure too, and is still "qat"
            "kind": "pruned" if kind == "float" and "structure" in state else kind,
            **va_meta(state),
        },
        source={"commit": git_commit(), **source},
        metrics=metrics,
    )

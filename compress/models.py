"""PyTorch models in and out of compression: float, pruned and QAT checkpoints and bundles.

Three kinds of model state share the checkpoint keys of :mod:`fer_edge.train.checkpoint`
(``model``, ``arch``, ``num_classes``, ``in_channels``, ``labels``, ``preprocess``):

- float: ``model`` fits ``build(arch)``;
- pruned: adds ``structure``, the channel counts of every conv, BN and linear layer, because
  structured pruning leaves layers narrower than ``build(arch)`` makes them;
- QAT (``kind == "qat"``): ``model`` is the state of the PT2E fake-quantised graph, rebuilt by
  :func:`fer_edge.compress.qat.rebuild`.

Everything here loads with ``weights_only=True``: a structure record is plain ints.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fer_edge import bundle as bundle_io
from fer_edge.errors import CheckpointError, InputError
from fer_edge.preprocess import PreprocessSpec
from fer_edge.train.checkpoint import load_checkpoint
from fer_edge.train.nets import build
from fer_edge.train.predictor import git_commit, model_from_state

# Attributes that fix a layer's tensor shapes; recorded for pruned models.
SHAPE_ATTRS = {
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.BatchNorm2d: ("num_features",),
    nn.Linear: ("in_features", "out_features"),
}
INFERENCE_KEYS = (
    "model",
    "arch",
    "num_classes",
    "in_channels",
    "labels",
    "preprocess",
    "kind",
    "structure",
    "source_model",
)


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


def model_from_any_state(state: dict) -> nn.Module:
    """The eval-mode network of a float, pruned or QAT checkpoint dict."""
    if state.get("kind") == "qat":
        from .qat import rebuild

        return rebuild(state)
    if "structure" not in state:
        return model_from_state(state)
    model = build(state["arch"], int(state["num_classes"]), int(state["in_channels"]))
    restore_structure(model, state["structure"], state["model"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"pruned weights do not fit their recorded structure: {str(e)[:300]}"
        ) from None
    return model.eval()


def checkpoint_path(path: str | os.PathLike) -> Path:
    """A checkpoint file from ``default``, a pytorch bundle folder, or a checkpoint path."""
    path = Path(bundle_io.resolve(path, pytorch=True))
    if path.is_dir():
        b = bundle_io.load_bundle(path)
        if b.format != "pytorch":
            raise CheckpointError(
                f"{path} is a {b.format} bundle; compression needs a checkpoint or a pytorch bundle"
            )
        return b.graph
    return path


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Load a float, pruned or QAT model from a checkpoint, a pytorch bundle, or ``default``."""
    state = load_checkpoint(checkpoint_path(path))
    spec = PreprocessSpec.from_dict(state["preprocess"])
    return LoadedModel(model_from_any_state(state), tuple(state["labels"]), spec, state)


def refuse_valence_arousal(model: LoadedModel, path, command: str) -> None:
    """Distillation, pruning and QAT train on class labels only: on a model that also predicts
    valence and arousal they would silently drop or detune those outputs, so they refuse it."""
    if int(model.state["num_classes"]) == len(model.labels) + 2:
        raise InputError(
            f"{path} also predicts valence and arousal; fer-edge {command} trains on class labels "
            "only and would lose them. Export it as it is (fer-edge export)."
        )


def inference_state(state: dict) -> dict:
    """What a deployed model needs from a training checkpoint (no optimizer, no history)."""
    return {k: state[k] for k in INFERENCE_KEYS if k in state}


def save_model_bundle(
    out: str | os.PathLike, state: dict, *, metrics: dict, source: dict
) -> bundle_io.Bundle:
    """Write ``state`` as a pytorch bundle (model.pt + model.json) atomically."""
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
            "kind": "pruned" if "structure" in state else kind,
        },
        source={"commit": git_commit(), **source},
        metrics=metrics,
    )


def model_cost(model: nn.Module, spec: PreprocessSpec) -> dict[str, int]:
    """Parameters and multiply-accumulates of one face through a float network."""
    import torch_pruning as tp

    x = torch.zeros(1, spec.channels, spec.size, spec.size)
    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, x)
    model.train(was_training)
    return {"params": int(params), "macs": int(macs)}

"""What compression asks of a loaded model (:mod:`fer_edge.train.model_io` loads it): what it
costs, and whether it can be compressed without losing outputs."""

from __future__ import annotations

import torch
from torch import nn

from fer_edge.errors import InputError
from fer_edge.preprocess import PreprocessSpec
from fer_edge.train.model_io import LoadedModel, has_valence_arousal


def refuse_valence_arousal(model: LoadedModel, path, command: str) -> None:
    """Distillation, pruning and QAT train on class labels only: on a model that also predicts
    valence and arousal they would silently drop or detune those outputs, so they refuse it."""
    if has_valence_arousal(model.state):
        raise InputError(
            f"{path} also predicts valence and arousal; fer-edge {command} trains on class labels "
            "only and would lose them. Export it as it is (fer-edge export)."
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

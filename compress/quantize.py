"""INT8 quantisation of a float network (PT2E, per-channel symmetric weights, per-tensor
activations): post-training quantisation, and the fake-quantised graph that quantisation-aware
training fine-tunes (``fer-edge qat``, :mod:`fer_edge.compress.qat`) and converts.

BN is folded into the convs first, then the graph is exported and fake-quantised with the
LiteRT PT2E quantizer's observers. The converted graph exports to TFLite full-integer INT8 and
OpenVINO INT8.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from torch import nn

from fer_edge.data import stratified_subset
from fer_edge.errors import CheckpointError
from fer_edge.preprocess import PreprocessSpec
from fer_edge.train.predictor import predict_logits

CALIBRATION_FACES = 512


class QuantizedNet(nn.Module):
    """A converted PT2E graph (quantise/dequantise around int8-exact ops) as an ordinary module.
    Exported graphs refuse ``train()``/``eval()``; this wrapper makes both no-ops."""

    def __init__(self, graph: torch.fx.GraphModule):
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def train(self, mode: bool = True) -> QuantizedNet:
        return self


def quantizer(qat: bool):
    """The LiteRT PT2E quantizer: int8 per-channel weights, int8 per-tensor activations. For QAT
    it takes the QAT config's fake-quant observers but not its conv-BN patterns (BN is folded
    before export; the conv-BN QAT rewrite breaks on torchao 0.18)."""
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )

    cfg = get_symmetric_quantization_config(is_per_channel=True, is_qat=qat)
    if qat:
        cfg = dataclasses.replace(cfg, is_qat=False)
    return PT2EQuantizer().set_global(cfg)


def _export(model: nn.Module, spec: PreprocessSpec, device) -> torch.fx.GraphModule:
    from torch.fx.experimental.optimization import fuse

    folded = fuse(copy.deepcopy(model).eval())  # conv+BN -> conv
    x = torch.zeros(2, spec.channels, spec.size, spec.size, device=device)
    batch = torch.export.Dim("batch", min=1, max=4096)
    return torch.export.export(folded, (x,), dynamic_shapes=({0: batch},)).module()


def ptq(model: nn.Module, calib: np.ndarray, spec: PreprocessSpec, device="cpu") -> QuantizedNet:
    """Post-training quantisation, calibrated on uint8 faces ``calib``."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(_export(model, spec, device), quantizer(qat=False))
    predict_logits(
        QuantizedNet(prepared), calib, spec, device, batch_size=64
    )  # observers record ranges
    return QuantizedNet(convert_pt2e(prepared, fold_quantize=False))


def prepare_qat(model: nn.Module, spec: PreprocessSpec, device="cpu") -> torch.fx.GraphModule:
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    return prepare_qat_pt2e(_export(model, spec, device), quantizer(qat=True))


def convert(prepared: torch.fx.GraphModule) -> QuantizedNet:
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    move_exported_model_to_eval(prepared)
    return QuantizedNet(convert_pt2e(copy.deepcopy(prepared), fold_quantize=False))


def rebuild(state: dict, float_model: nn.Module) -> QuantizedNet:
    """The converted INT8 network of a QAT model state, from the float network it was made from
    (:func:`fer_edge.train.model_io.model_from_state` builds both)."""
    spec = PreprocessSpec.from_dict(state["preprocess"])
    prepared = prepare_qat(float_model, spec)
    try:
        prepared.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"QAT weights do not fit the rebuilt graph: {str(e)[:300]}") from None
    return convert(prepared)


def calibration_faces(
    images: np.ndarray, labels: np.ndarray, n: int = CALIBRATION_FACES, seed: int = 0
) -> np.ndarray:
    """A class-stratified sample of about ``n`` faces for calibration."""
    frac = min(1.0, n / max(1, len(images)))
    return images[stratified_subset(labels, frac, seed)]

"""INT8 quantisation-aware fine-tuning (PT2E, per-channel symmetric weights, per-tensor
activations), with post-training quantisation of the same model as the comparison row.

BN is folded into the convs first, then the graph is exported and fake-quantised with the
LiteRT PT2E quantizer's QAT observers, fine-tuned, and converted. The result exports to TFLite
full-integer INT8 and OpenVINO INT8 (``fer-edge export --int8``). The checkpoint holds the float
source weights (to rebuild the graph) and the fake-quantised graph's state (weights plus learnt
ranges), all plain tensors, so it loads with ``weights_only=True`` and ``--resume`` works.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys

import numpy as np
import torch
from torch import nn

from fer_edge.data import stratified_subset
from fer_edge.errors import CheckpointError, InputError
from fer_edge.metrics import classification_report
from fer_edge.preprocess import PreprocessSpec
from fer_edge.train.predictor import predict_logits

from . import finetune
from .models import (
    inference_state,
    load_model,
    model_cost,
    model_from_any_state,
    refuse_valence_arousal,
)

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


def rebuild(state: dict) -> QuantizedNet:
    """The converted INT8 network of a QAT checkpoint dict."""
    source = {**state, "model": state["source_model"], "kind": "float"}
    spec = PreprocessSpec.from_dict(state["preprocess"])
    prepared = prepare_qat(model_from_any_state(source), spec)
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


def accuracy(model: nn.Module, ds, spec: PreprocessSpec, device="cpu") -> float:
    return float(
        classification_report(
            ds.labels, predict_logits(model, ds.images, spec, device), ds.label_names
        )["accuracy"]
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, help="float or pruned checkpoint, pytorch bundle or 'default'"
    )
    p.add_argument(
        "--calib-faces",
        type=int,
        default=CALIBRATION_FACES,
        help="training faces that calibrate PTQ",
    )
    finetune.add_arguments(p, epochs=3, lr=1e-4, out="runs/qat")


def qat(args: argparse.Namespace):
    """Quantisation-aware fine-tuning as ``args`` says; returns the QAT bundle."""
    from torchao.quantization.pt2e import move_exported_model_to_train

    src = load_model(args.model)
    refuse_valence_arousal(src, args.model, "qat")
    if src.kind == "qat":
        raise InputError(f"{args.model} is already quantised; pass its float source")
    spec = src.spec
    config = {
        "method": "qat",
        "arch": src.state["arch"],
        "model": str(args.model),
        "size": spec.size,
        "channels": spec.channels,
    }
    ft = finetune.Finetune(args, config, spec)
    torch.manual_seed(args.seed)
    dev = ft.device
    float_model = src.model.to(dev).eval()
    calib = calibration_faces(ft.train.images, ft.train.labels, args.calib_faces, args.seed)
    fp32_val = accuracy(float_model, ft.val, spec, dev)
    ptq_val = accuracy(ptq(float_model, calib, spec, dev), ft.val, spec, dev)
    print(f"val accuracy: fp32 {fp32_val:.4f}, PTQ int8 {ptq_val:.4f}", file=sys.stderr)

    prepared = prepare_qat(float_model, spec, dev)
    opt, sched = ft.optimizer(prepared.parameters())
    if ft.resume_state is not None:
        prepared.load_state_dict(ft.resume_state["model"])
        opt.load_state_dict(ft.resume_state["optimizer"])
        sched.load_state_dict(ft.resume_state["scheduler"])

    def step(idx, g):
        move_exported_model_to_train(prepared)
        x, y = ft.batch(idx, g)
        loss = torch.nn.functional.cross_entropy(prepared(x), y)
        return {"loss": ft.update(loss, opt, sched)}

    def evaluate(epoch: int) -> dict:
        return ft.evaluate(convert(prepared))

    source = inference_state(src.state)

    def state(epoch: int) -> dict:
        return {
            **source,
            "kind": "qat",
            "model": prepared.state_dict(),
            "source_model": source["model"],
            "epoch": epoch,
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "config": ft.config,
        }

    ft.fit(step, state, evaluate)
    qat_val = accuracy(convert(prepared), ft.val, spec, dev)
    metrics = {
        "val": {"accuracy": qat_val},
        "val_fp32": {"accuracy": fp32_val},
        "val_ptq_int8": {"accuracy": ptq_val},
        **model_cost(float_model, spec),
    }
    b = ft.save_bundle(state(args.epochs - 1), metrics)
    print(
        f"val accuracy: fp32 {fp32_val:.4f}, PTQ int8 {ptq_val:.4f}, QAT int8 {qat_val:.4f} -> {b.root}",
        file=sys.stderr,
    )
    return b


def run(args: argparse.Namespace) -> int:
    qat(args)
    return 0

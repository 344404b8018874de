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
import sys

import torch
from torch import nn

from fer_edge.errors import InputError
from fer_edge.metrics import classification_report
from fer_edge.preprocess import PreprocessSpec
from fer_edge.train.model_io import inference_state, load_model
from fer_edge.train.predictor import predict_logits

from . import finetune
from .models import model_cost, refuse_valence_arousal
from .quantize import CALIBRATION_FACES, calibration_faces, convert, prepare_qat, ptq


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

"""INT8 quantisation-aware fine-tuning: :func:`qat`, the library side of ``fer-edge qat`` (whose
``--help`` describes the method), with post-training quantisation of the same model as the
comparison row; the PT2E graph tools are :mod:`fer_edge.compress.quantize`. The checkpoint holds
the float source weights and the fake-quantised graph's state, plain tensors that load with
``weights_only=True``.
"""

from __future__ import annotations

import os
import sys

from torch import nn

from fer_edge.bundle import Bundle
from fer_edge.errors import InputError
from fer_edge.metrics import classification_report
from fer_edge.preprocess import PreprocessSpec
from fer_edge.train.model_io import inference_state, load_model
from fer_edge.train.predictor import predict_logits

from . import finetune
from .balance import adjusted_cross_entropy, carried_logit_adjust
from .models import model_cost, refuse_valence_arousal
from .quantize import CALIBRATION_FACES, calibration_faces, convert, prepare_qat, ptq


def accuracy(model: nn.Module, ds, spec: PreprocessSpec, device="cpu") -> float:
    return float(
        classification_report(
            ds.labels, predict_logits(model, ds.images, spec, device), ds.label_names
        )["accuracy"]
    )


def qat(
    *,
    model: str | os.PathLike,
    data: str | os.PathLike,
    calib_faces: int = CALIBRATION_FACES,
    epochs: int = 3,
    lr: float = 1e-4,
    out: str | os.PathLike = "runs/qat",
    **options,
) -> Bundle:
    """Quantisation-aware fine-tuning of ``model`` (float or pruned: a checkpoint, a pytorch
    bundle or ``default``), with PTQ on ``calib_faces`` training faces as the comparison row;
    returns the QAT bundle (OUT/bundle). ``options`` are the fine-tuning run's, as for
    :func:`fer_edge.compress.distill.distill` (QAT always trains in fp32).
    """
    from torchao.quantization.pt2e import move_exported_model_to_train

    src = load_model(model)
    refuse_valence_arousal(src, model, "qat")
    if src.kind == "qat":
        raise InputError(f"{model} is already quantised; pass its float source")
    spec = src.spec
    config = {
        "method": "qat",
        "arch": src.state["arch"],
        "model": str(model),
    }
    ft = finetune.Finetune(config, spec, data=data, epochs=epochs, lr=lr, out=out, **options)
    dev = ft.device
    float_model = src.model.to(dev).eval()
    calib = calibration_faces(ft.train.images, ft.train.labels, calib_faces, ft.seed)
    fp32_val = accuracy(float_model, ft.val, spec, dev)
    ptq_val = accuracy(ptq(float_model, calib, spec, dev), ft.val, spec, dev)
    print(f"val accuracy: fp32 {fp32_val:.4f}, PTQ int8 {ptq_val:.4f}", file=sys.stderr)

    # fine-tuning keeps the class balance the model was trained with (fer_edge.compress.balance)
    carried, log_prior = carried_logit_adjust(src.state, ft.labels, len(src.labels))
    prepared = prepare_qat(float_model, spec, dev)
    opt, sched = ft.optimizer([prepared])
    if ft.resume_state is not None:
        prepared.load_state_dict(ft.resume_state["model"])
        opt.load_state_dict(ft.resume_state["optimizer"])
        sched.load_state_dict(ft.resume_state["scheduler"])

    def step(idx, g):
        move_exported_model_to_train(prepared)
        x, y = ft.batch(idx, g)
        loss = adjusted_cross_entropy(prepared(x), y, carried, log_prior)
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
    b = ft.save_bundle(state(epochs - 1), metrics)
    print(
        f"val accuracy: fp32 {fp32_val:.4f}, PTQ int8 {ptq_val:.4f}, QAT int8 {qat_val:.4f} -> {b.root}",
        file=sys.stderr,
    )
    return b

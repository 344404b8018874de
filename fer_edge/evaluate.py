"""Evaluate a model on a labelled FER dataset.

Dataset images are treated as face crops, as FER datasets are. MODEL is a bundle folder (any
format), a training checkpoint (.pt) or ``default``. Reports accuracy, macro-F1, per-class
precision/recall/F1 and one-vs-rest ROC-AUC, and the confusion matrix (optionally as a PNG), over
the faces with a class label. For a model that also predicts valence and arousal (K + 2 outputs,
e.g. from ``fer-edge train --method avce``) on data with valence/arousal columns, it adds RMSE,
SAGR and CCC per axis and the mean CCC (``valence_arousal``). Several ``--model`` score an
ensemble: the mean of their logits (what ``fer-edge distill`` learns from several teachers), its
calibration error at temperature 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from . import bundle as bundle_io
from .calibration import expected_calibration_error, plot_reliability, softmax
from .errors import InputError
from .metrics import VA_AXES, classification_report, plot_confusion, va_report
from .preprocess import TTA_MODES
from .scoring import scored


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        action="append",
        help="bundle folder, checkpoint .pt, or 'default' (the default); repeat it to score an "
        "ensemble: the mean of the models' logits",
    )
    p.add_argument(
        "--data",
        required=True,
        help="class-folder root, split root (with --split), Kaggle CSV or label list",
    )
    p.add_argument(
        "--split", help="train, val or test, when DATA holds splits (or is the Kaggle CSV)"
    )
    p.add_argument(
        "--backend",
        default="auto",
        help="runtime for non-PyTorch bundles: auto, onnxruntime, openvino, tflite",
    )
    p.add_argument("--threads", type=int, help="inference threads")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--tta",
        nargs="?",
        const="flip",
        default="none",
        choices=TTA_MODES,
        help="test-time augmentation of PyTorch models: average with the mirrored face "
        "(--tta, or --tta flip), or over ten crops (--tta ten-crop: four corners and the centre, "
        "7/8 of the side, and their mirror images)",
    )
    p.add_argument("--confusion", help="write the confusion matrix as a PNG here")
    p.add_argument(
        "--reliability", metavar="PNG", help="write the reliability diagram (calibration) here"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--record",
        action="store_true",
        help="store accuracy, macro-F1 and n under metrics.<split> in the bundle's model.json",
    )


def evaluate(
    model: str,
    data: str,
    split: str | None = None,
    *,
    backend: str = "auto",
    threads: int | None = None,
    batch_size: int = 256,
    tta: str = "none",
    reliability_png: str | os.PathLike | None = None,
) -> dict:
    """The metrics of MODEL on the labelled faces of ``data`` (see the module docstring); a list
    of models is scored as their ensemble (mean logits). ``reliability_png``: also draw the
    reliability diagram of its calibrated scores there."""
    models = [model] if isinstance(model, str | os.PathLike) else list(model)
    if not models:
        raise InputError("evaluate needs at least one model")
    ds, logits, labels, backend_used, temperature, seconds = scored(
        models[0], data, split, backend, threads, batch_size, tta
    )
    for other in models[1:]:
        o_ds, o_logits, o_labels, o_backend, _, o_seconds = scored(
            other, data, split, backend, threads, batch_size, tta
        )
        if tuple(o_labels) != tuple(labels) or not np.array_equal(o_ds.labels, ds.labels):
            raise InputError(
                f"{other}: an ensemble's models must share labels and faces, and {models[0]} "
                f"has {', '.join(labels)}"
            )
        if o_logits.shape != logits.shape:
            raise InputError(
                f"{other}: {o_logits.shape[1]} outputs, {models[0]} has {logits.shape[1]}"
            )
        logits = logits + o_logits
        backend_used, seconds = f"{backend_used}+{o_backend}", seconds + o_seconds
    if len(models) > 1:
        # The members' own temperatures were fitted to them alone, not to their mean
        logits, temperature = logits / len(models), 1.0
    k = len(labels)
    labelled = ds.labels >= 0  # label lists may hold faces with valence/arousal only
    report = classification_report(ds.labels[labelled], logits[labelled, :k], labels)
    if labelled.any():
        probs = softmax(logits[labelled, :k], temperature)
        report["ece"] = expected_calibration_error(probs, ds.labels[labelled])
        report["temperature"] = temperature
        if reliability_png:
            title = f"{' + '.join(Path(str(m)).name for m in models)} on {split or Path(str(data)).name}"
            plot_reliability(probs, ds.labels[labelled], reliability_png, title)
    if logits.shape[1] == k + 2 and ds.valence is not None:
        va = va_report(np.stack([ds.valence, ds.arousal], axis=1), logits[:, k:])
        if va["n"] > 1:
            report["valence_arousal"] = va
    report.update(
        model=str(models[0]) if len(models) == 1 else [str(m) for m in models],
        data=str(data),
        split=split,
        backend=backend_used,
        skipped_classes=ds.skipped_classes,
        n_unreadable=ds.n_unreadable,
        seconds=round(seconds, 3),
        tta=tta,
    )
    return report


def _va_lines(va: dict) -> list[str]:
    lines = [f"valence/arousal on {va['n']} faces: mean CCC = {va['ccc']:.4f}"]
    for axis in VA_AXES:
        m = va[axis]
        lines.append(f"{axis:<10} RMSE {m['rmse']:.4f}   SAGR {m['sagr']:.4f}   CCC {m['ccc']:.4f}")
    return lines


def _table(r: dict) -> str:
    name = r["model"] if isinstance(r["model"], str) else " + ".join(r["model"])
    title = f"model {name} ({r['backend']}) on {r['data']}" + (
        f" [{r['split']}]" if r["split"] else ""
    )
    va = _va_lines(r["valence_arousal"]) if "valence_arousal" in r else []
    if r["n"] == 0:
        return "\n".join([title, *va])
    lines = [
        title,
        f"n = {r['n']}   accuracy = {r['accuracy']:.4f}   macro-F1 = {r['macro_f1']:.4f}"
        f"   macro precision = {r['macro_precision']:.4f}   macro recall = {r['macro_recall']:.4f}"
        + (f"   macro ROC-AUC = {r['macro_roc_auc']:.4f}" if r["macro_roc_auc"] is not None else "")
        + f"   ECE = {r['ece']:.4f} (T = {r['temperature']:.3g})",
        f"{'class':<10} {'prec':>6} {'recall':>6} {'f1':>6} {'auc':>6} {'n':>6}",
    ]
    for name, m in r["per_class"].items():
        auc = f"{m['roc_auc']:.3f}" if m["roc_auc"] is not None else "-"
        lines.append(
            f"{name:<10} {m['precision']:>6.3f} {m['recall']:>6.3f} {m['f1']:>6.3f} {auc:>6} {m['support']:>6}"
        )
    if r["skipped_classes"]:
        lines.append(
            "skipped classes the model does not know: "
            + ", ".join(f"{k} ({v})" for k, v in r["skipped_classes"].items())
        )
    if r["n_unreadable"]:
        lines.append(f"skipped {r['n_unreadable']} unreadable images")
    return "\n".join(lines + va)


def run(args: argparse.Namespace) -> int:
    models = args.model or ["default"]
    if args.record and len(models) > 1:
        raise InputError(
            "--record stores one model's metrics; an ensemble has no bundle to hold them"
        )
    report = evaluate(
        models,
        args.data,
        args.split,
        backend=args.backend,
        threads=args.threads,
        batch_size=args.batch_size,
        tta=args.tta,
        reliability_png=args.reliability,
    )
    if args.record:
        if not bundle_io.resolve(models[0]).is_dir():
            raise InputError("--record needs MODEL to be a bundle folder")
        summary = {k: report[k] for k in ("accuracy", "macro_f1", "macro_roc_auc", "n")}
        if "valence_arousal" in report:
            summary["valence_arousal"] = report["valence_arousal"]
        summary["data"] = Path(args.data).name + (f"/{args.split}" if args.split else "")
        bundle_io.record_metrics(bundle_io.resolve(models[0]), args.split or "eval", summary)
    if args.confusion:
        title = f"{' + '.join(Path(str(m)).name for m in models)} on {args.split or Path(args.data).name}: acc {report['accuracy']:.3f}"
        plot_confusion(report["confusion"], report["labels"], args.confusion, title)
    if args.json:
        json.dump(report, sys.stdout)
        print()
    else:
        print(_table(report))
    return 0

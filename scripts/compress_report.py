"""The compression table: teacher, distilled student (FP32), pruned student, PTQ INT8 and QAT INT8
student, each with FER test accuracy, parameters, MACs, and per format (PyTorch, ONNX, TFLite,
OpenVINO) file size, test accuracy through the SDK runtime and per-face latency at 1 thread.

Runs ``fer-edge distill``, ``prune``, ``qat`` and ``export`` into OUT (every step is skipped when
its bundle already exists, and training steps resume), then prints JSON and a markdown table and
writes both to OUT/report.json and OUT/report.md.

    python scripts/compress_report.py --teacher runs/train/best --data ../shared/data/fer2013 \\
        --out runs/compress
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from fer_edge import atomic
from fer_edge.bundle import load_bundle
from fer_edge.data import load_dataset
from fer_edge.preprocess import normalize
from fer_edge.runtimes import load_runtime


def _args(module, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return p.parse_args(argv)


def _train_step(module, fn, out: Path, argv: list[str]) -> Path:
    """Run a compression command into ``out`` unless its bundle exists; resume a cut-off run."""
    if not (out / "bundle" / "model.json").is_file():
        resume = ["--resume"] if (out / "last.pt").is_file() else []
        fn(_args(module, [*argv, "--out", str(out), "--no-progress", *resume]))
    return out / "bundle"


def _export(model: Path, target: str, int8: bool, data: str, out: Path) -> Path:
    from fer_edge.compress import export

    if not (out / "model.json").is_file():
        argv = ["--model", str(model), "--target", target, "--data", data, "--out", str(out)]
        export.export(_args(export, argv + (["--int8"] if int8 else [])))
    return out


def latency_ms(runtime, face: np.ndarray, repeats: int = 200) -> float:
    """Median wall time of one face through ``runtime`` (after a warm-up)."""
    for _ in range(20):
        runtime.run(face)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runtime.run(face)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def measure_format(bundle_dir: Path, test) -> dict:
    """Size, test accuracy through the SDK runtime, and 1-thread latency of an exported bundle."""
    b = load_bundle(bundle_dir)
    rt = load_runtime(b, num_threads=1)
    x = normalize(test.images, b.preprocess)
    logits = np.concatenate([rt.run(x[i : i + 256]) for i in range(0, len(x), 256)])
    return {
        "bytes": sum((b.root / f).stat().st_size for f in b.meta["files"]),
        "test_accuracy": float((logits.argmax(1) == test.labels).mean()),
        "latency_ms": latency_ms(rt, x[:1]),
        "runtime": rt.name,
        "parity": b.meta["metrics"].get("parity", {}),
    }


class _TorchRunner:
    """A PyTorch model behind the runtime's ``run`` so one timing function serves both."""

    def __init__(self, model):
        self.run = model


def measure_torch(model_path: Path, test) -> dict:
    """Test accuracy, parameters, MACs and PyTorch file size of a pytorch bundle or checkpoint."""
    import torch

    from fer_edge.compress.models import checkpoint_path, load_model, model_cost
    from fer_edge.train.predictor import predict_logits

    torch.set_num_threads(1)
    lm = load_model(model_path)
    float_model = lm.model
    if lm.kind == "qat":
        from fer_edge.compress.models import model_from_any_state

        float_model = model_from_any_state(
            {**lm.state, "model": lm.state["source_model"], "kind": "float"}
        )
    logits = predict_logits(lm.model, test.images, lm.spec)
    x = torch.from_numpy(normalize(test.images[:1], lm.spec))
    with torch.no_grad():
        lat = latency_ms(_TorchRunner(lm.model), x)
    return {
        "test_accuracy": float((logits.argmax(1) == test.labels).mean()),
        **model_cost(float_model, lm.spec),
        "pytorch": {"bytes": checkpoint_path(model_path).stat().st_size, "latency_ms": lat},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--teacher", required=True, help="teacher checkpoint or pytorch bundle")
    p.add_argument("--data", required=True, help="FER split root (train/, val/, test/)")
    p.add_argument("--out", default="runs/compress")
    p.add_argument("--student", default="compact_cnn")
    p.add_argument("--distill-epochs", type=int, default=30)
    p.add_argument("--prune-ratio", type=float, default=0.3)
    p.add_argument("--prune-epochs", type=int, default=8)
    p.add_argument("--qat-epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--limit-per-class", type=int, help="training faces per class (quick runs)")
    p.add_argument("--test-split", default="test")
    a = p.parse_args(argv)

    from fer_edge.compress import distill, prune, qat
    from fer_edge.compress.parity import ParityError

    out = Path(a.out)
    common = ["--data", a.data, "--batch-size", str(a.batch_size)]
    if a.limit_per_class:
        common += ["--limit-per-class", str(a.limit_per_class)]
    student = _train_step(
        distill,
        distill.distill,
        out / "distill",
        [
            "--teacher",
            a.teacher,
            "--student",
            a.student,
            "--epochs",
            str(a.distill_epochs),
            *common,
        ],
    )
    pruned = _train_step(
        prune,
        prune.prune,
        out / "prune",
        [
            "--model",
            str(student),
            "--ratio",
            str(a.prune_ratio),
            "--epochs",
            str(a.prune_epochs),
            "--steps",
            str(min(4, a.prune_epochs)),
            *common,
        ],
    )
    quant = _train_step(
        qat, qat.qat, out / "qat", ["--model", str(student), "--epochs", str(a.qat_epochs), *common]
    )

    rows = {
        "teacher": (Path(a.teacher), False),
        "student_fp32": (student, False),
        "pruned": (pruned, False),
        "ptq_int8": (student, True),
        "qat_int8": (quant, True),
    }
    test = load_dataset(a.data, a.test_split)
    report = {"data": a.data, "test_faces": len(test), "rows": {}}
    for name, (model, int8) in rows.items():
        print(f"measuring {name}", file=sys.stderr)
        row = (
            dict(report["rows"]["student_fp32"])
            if name == "ptq_int8"
            else measure_torch(model, test)
        )
        if int8:  # PyTorch only simulates INT8; its size and speed say nothing about deployment
            row.pop("pytorch")
        targets = ("tflite", "openvino") if int8 else ("onnx", "tflite", "openvino")
        for target in targets:
            try:
                bundle = _export(model, target, int8, a.data, out / "export" / f"{name}_{target}")
            except ParityError as e:  # recorded, so one refused format does not lose the table
                row[target] = {"refused": str(e)}
                continue
            row[target] = measure_format(bundle, test)
        deployed = [row[t]["test_accuracy"] for t in targets if "test_accuracy" in row[t]]
        if int8 and deployed:  # the deployed INT8 accuracy is the runtime's (TFLite first)
            row["test_accuracy"] = deployed[0]
        report["rows"][name] = row
    text = json.dumps(report, indent=2)
    print(text)
    table = markdown(report)
    print(table)
    atomic.write_text(out / "report.json", text + "\n")
    atomic.write_text(out / "report.md", table)
    return 0


def markdown(report: dict) -> str:
    fmts = ("pytorch", "onnx", "tflite", "openvino")
    head = (
        "| model | test acc | params | MACs | " + " | ".join(f"{f} KiB / ms" for f in fmts) + " |"
    )
    lines = [head, "|" + "---|" * (4 + len(fmts))]
    for name, r in report["rows"].items():
        cells = [
            f"{r[f]['bytes'] / 1024:.0f} / {r[f]['latency_ms']:.2f}"
            if "bytes" in r.get(f, {})
            else ("refused" if f in r else "-")
            for f in fmts
        ]
        lines.append(
            f"| {name} | {100 * r['test_accuracy']:.2f} | {r['params'] / 1e6:.3f}M | {r['macs'] / 1e6:.1f}M | "
            + " | ".join(cells)
            + " |"
        )
    return (
        "\n".join(lines)
        + f"\n\nTest accuracy on {report['test_faces']} faces; latency per face at 1 thread.\n"
    )


if __name__ == "__main__":
    sys.exit(main())

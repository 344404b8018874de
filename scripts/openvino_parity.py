"""Compile OpenVINO bundles under every inference precision this CPU offers and measure them.

For each bundle (default: every OpenVINO bundle shipped in fer_edge/models) on real faces:
top-1 agreement and the largest softmax-probability difference of each precision (f32, and bf16
where the CPU has it) against the bundle as the SDK runs it (its recorded hints), the same
against each --twin bundle (e.g. the TFLite INT8 export of the same model, or the previous IR),
accuracy, and the median per-face latency at 1 thread. Prints one JSON object.

    python scripts/openvino_parity.py --data ../shared/data/fer2013 --twin fer_edge/models/default_tflite
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from fer_edge import bundle as bundle_io
from fer_edge.cpu import cpu_flags, cpu_name
from fer_edge.data import load_dataset, stratified_subset
from fer_edge.preprocess import normalize
from fer_edge.runtimes import load_runtime
from fer_edge.runtimes.openvino import OpenVinoRuntime, cpu_precisions

MODELS = Path(__file__).resolve().parent.parent / "fer_edge" / "models"


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def scores(runtime, x: np.ndarray) -> np.ndarray:
    return softmax(np.concatenate([runtime.run(x[i : i + 64]) for i in range(0, len(x), 64)]))


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    return {
        "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
        "max_prob_diff": float(np.abs(a - b).max()),
    }


def latency_ms(bundle, hints: dict, x: np.ndarray, repeats: int = 300) -> float:
    rt = OpenVinoRuntime(bundle, num_threads=1, hints=hints)
    for i in range(20):
        rt.run(x[i % len(x)][None])
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        rt.run(x[i % len(x)][None])
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="FER data with class folders (split root)")
    p.add_argument("--split", default="val", help="split whose faces are compared")
    p.add_argument("--faces", type=int, default=1000, help="class-stratified faces compared")
    p.add_argument("--bundles", nargs="*", help="OpenVINO bundles (default: the shipped ones)")
    p.add_argument("--twin", action="append", default=[], help="bundle to compare with too")
    args = p.parse_args()

    paths = args.bundles or [
        d
        for d in sorted(MODELS.iterdir())
        if (d / "model.json").is_file() and bundle_io.load_bundle(d).format == "openvino"
    ]
    flags = cpu_flags()
    report = {
        "cpu": cpu_name(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "precisions": cpu_precisions(),
        "split": args.split,
        "bundles": [],
    }
    for path in paths:
        b = bundle_io.load_bundle(path)
        ds = load_dataset(args.data, args.split, labels=b.labels, spec=b.preprocess)
        if args.faces < len(ds):
            ds = ds.subset(stratified_subset(ds.labels, args.faces / len(ds), seed=0))
        x = normalize(ds.images, b.preprocess)
        sdk = load_runtime(b, "openvino")
        ref = scores(sdk, x)
        row = {
            "bundle": str(path),
            "precision": b.precision,
            "sdk_hints": sdk.hints,
            "faces": len(ds),
            "accuracy": float((ref.argmax(1) == ds.labels).mean()),
            "per_precision": {},
            "twins": {},
        }
        for precision in report["precisions"]:
            hints = {"INFERENCE_PRECISION_HINT": precision}
            got = scores(OpenVinoRuntime(b, hints=hints), x)
            row["per_precision"][precision] = {
                **agreement(ref, got),
                "accuracy": float((got.argmax(1) == ds.labels).mean()),
                "latency_ms_1_thread": round(latency_ms(b, hints, x), 3),
            }
        for twin in args.twin:
            tb = bundle_io.load_bundle(twin)
            row["twins"][twin] = {
                "format": tb.format,
                **agreement(ref, scores(load_runtime(tb), x)),
            }
        report["bundles"].append(row)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

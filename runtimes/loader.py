"""Opening models on a backend: a bundle as a :class:`~fer_edge.runtimes.base.Runtime`, or a
raw ``.tflite`` graph (a detector's, a landmarker's). Backends are imported only when used, so
importing fer_edge never imports a runtime that is not used."""

from __future__ import annotations

import importlib
from pathlib import Path

from fer_edge import formats
from fer_edge.bundle import Bundle
from fer_edge.errors import RuntimeBackendError
from fer_edge.formats import AUTO_ORDER, BACKENDS

from .base import Runtime


def open_tflite_graph(path, what: str, backend: str = "auto", num_threads: int | None = None):
    """A raw ``.tflite`` graph (a detector's or landmarker's, not a bundle) on the tflite or the
    openvino backend, or on onnxruntime when an ``.onnx`` conversion of it ships beside it (the
    BlazeFace detectors do, so the base install runs them); ``what`` names the model in errors.
    Returns a callable: NHWC float32 -> list of output arrays."""
    path = Path(path)
    onnx_path = path.with_suffix(".onnx")
    runners = ("tflite", "openvino") + (("onnxruntime",) if onnx_path.is_file() else ())
    if backend == "auto":
        backend = next((n for n in runners if formats.backend_installed(n)), None)
        if backend is None:
            raise RuntimeBackendError(
                f"the {what} needs the tflite or openvino backend (pip install 'fer-edge[tflite]')"
            )
    if backend == "tflite":
        from .tflite import TfliteGraph

        return TfliteGraph(path, num_threads)
    if backend == "openvino":
        from .openvino import OpenVinoGraph

        return OpenVinoGraph(path, num_threads)
    if backend == "onnxruntime" and "onnxruntime" in runners:
        from .onnxruntime import OnnxGraph

        return OnnxGraph(onnx_path, num_threads)
    raise RuntimeBackendError(f"the {what} runs on {', '.join(runners)}, not {backend!r}")


def load_runtime(bundle: Bundle, backend: str = "auto", num_threads: int | None = None) -> Runtime:
    """Open ``bundle`` with ``backend`` (or the best installed one for its format)."""
    if backend == "auto":
        for name in AUTO_ORDER:
            if bundle.format in BACKENDS[name].formats and formats.backend_installed(name):
                backend = name
                break
        else:
            options = [f"fer-edge[{n}]" for n in AUTO_ORDER if bundle.format in BACKENDS[n].formats]
            if not options:  # pytorch bundles: for training tools, not the SDK
                raise RuntimeBackendError(
                    f"the SDK cannot run {bundle.format!r} bundles; export the model first "
                    "(fer-edge export) to onnx, tflite or openvino"
                )
            raise RuntimeBackendError(
                f"no installed backend runs {bundle.format!r} bundles; install one of: "
                + ", ".join(options)
            )
    if backend not in BACKENDS:
        raise RuntimeBackendError(
            f"unknown backend {backend!r}; choose from auto, {', '.join(BACKENDS)}"
        )
    spec = BACKENDS[backend]
    if bundle.format not in spec.formats:
        raise RuntimeBackendError(
            f"backend {backend!r} cannot run {bundle.format!r} bundles (it runs {', '.join(spec.formats)})"
        )
    if not formats.backend_installed(backend):
        raise RuntimeBackendError(
            f"backend {backend!r} is not installed (needs the Python package {spec.imports[0]!r})"
        )
    module = importlib.import_module(f"{__package__}.{spec.module}")
    return module.load(bundle, num_threads=num_threads)

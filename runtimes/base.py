"""The runtime interface: a loaded bundle that maps a float32 NCHW batch to logits.

Backends register here by module name and load lazily, so importing fer_edge never imports a
runtime that is not used.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from fer_edge.bundle import Bundle
from fer_edge.errors import BundleError, RuntimeBackendError

# backend name -> (module in this package, the import it needs, bundle formats it runs)
BACKENDS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "onnxruntime": ("onnxruntime", ("onnxruntime",), ("onnx",)),
    "openvino": ("openvino", ("openvino",), ("openvino", "onnx", "tflite")),
    "tflite": ("tflite", ("ai_edge_litert", "tflite_runtime"), ("tflite",)),
}
# "auto" prefers, per bundle format, the fastest backend measured on x86 and Arm CPUs.
AUTO_ORDER = ("tflite", "openvino", "onnxruntime")


class Runtime(ABC):
    """A bundle loaded for inference. ``run`` takes float32 (N, C, H, W), returns (N, K) logits."""

    name: str = "base"

    def __init__(self, bundle: Bundle, num_threads: int | None = None):
        self.bundle = bundle
        self.num_threads = num_threads

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        spec = self.bundle.preprocess
        want = (spec.channels, spec.size, spec.size)
        if not isinstance(batch, np.ndarray) or batch.ndim != 4 or batch.shape[1:] != want:
            shape = getattr(batch, "shape", None)
            raise RuntimeBackendError(
                f"{self.name}: input must be float32 (N, {want[0]}, {want[1]}, {want[2]}), got {shape}"
            )
        return np.ascontiguousarray(batch, dtype=np.float32)

    @property
    def num_outputs(self) -> int:
        """Columns of ``run``'s output: the label logits, then valence and arousal when the
        bundle's ``model.valence_arousal`` is true."""
        return self.bundle.num_classes + (
            2 if self.bundle.meta["model"].get("valence_arousal") else 0
        )

    def _check_output(self, out: object, n: int) -> np.ndarray:
        """The graph's first output as (n, num_outputs) float32 logits: (N, K) or (N, K, 1, 1);
        RuntimeBackendError for any other shape (a rank-1 or fully convolutional output)."""
        out = np.asarray(out)
        want = (n, self.num_outputs)
        if out.ndim < 1 or out.shape[0] != n or out.size != n * self.num_outputs:
            raise RuntimeBackendError(
                f"{self.name}: {self.bundle.graph.name} gave an output of shape {out.shape} for "
                f"{n} faces; a classifier bundle's graph must output (N, {self.num_outputs})"
            )
        return out.reshape(want).astype(np.float32, copy=False)

    def _check_num_classes(self, outputs: object) -> None:
        """Refuse a bundle whose label list does not match the graph's output size
        (``outputs`` may be a symbolic dimension name, which is not checked)."""
        if isinstance(outputs, int) and outputs > 0 and outputs != self.num_outputs:
            raise BundleError(
                f"bundle {self.bundle.name!r} lists {self.bundle.num_classes} labels but its graph "
                f"{self.bundle.graph.name} outputs {outputs} scores"
            )


class GraphRuntime(Runtime):
    """A runtime around a callable ``graph`` (float32 in, outputs out) whose input is NCHW, or
    NHWC when ``_nhwc`` is set; subclasses load the graph and choose the layout."""

    graph: object
    _nhwc: bool = False

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = self._check_batch(batch)
        if len(x) == 0:
            return np.zeros((0, self.num_outputs), np.float32)
        if self._nhwc:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        return self._check_output(self.graph(x)[0], len(x))


def _installed(imports: tuple[str, ...]) -> bool:
    return any(importlib.util.find_spec(m) is not None for m in imports)


def open_tflite_graph(path, what: str, backend: str = "auto", num_threads: int | None = None):
    """A raw ``.tflite`` graph (a detector's or landmarker's, not a bundle) on the tflite or the
    openvino backend, or on onnxruntime when an ``.onnx`` conversion of it ships beside it (the
    BlazeFace detectors do, so the base install runs them); ``what`` names the model in errors.
    Returns a callable: NHWC float32 -> list of output arrays."""
    path = Path(path)
    onnx_path = path.with_suffix(".onnx")
    runners = ("tflite", "openvino") + (("onnxruntime",) if onnx_path.is_file() else ())
    if backend == "auto":
        backend = next((n for n in runners if _installed(BACKENDS[n][1])), None)
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


def available_backends() -> list[str]:
    return [name for name, (_, imports, _) in BACKENDS.items() if _installed(imports)]


def load_runtime(bundle: Bundle, backend: str = "auto", num_threads: int | None = None) -> Runtime:
    """Open ``bundle`` with ``backend`` (or the best installed one for its format)."""
    if backend == "auto":
        for name in AUTO_ORDER:
            _, imports, formats = BACKENDS[name]
            if bundle.format in formats and _installed(imports):
                backend = name
                break
        else:
            options = [f"fer-edge[{n}]" for n in AUTO_ORDER if bundle.format in BACKENDS[n][2]]
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
    module_name, imports, formats = BACKENDS[backend]
    if bundle.format not in formats:
        raise RuntimeBackendError(
            f"backend {backend!r} cannot run {bundle.format!r} bundles (it runs {', '.join(formats)})"
        )
    if not _installed(imports):
        raise RuntimeBackendError(
            f"backend {backend!r} is not installed (needs the Python package {imports[0]!r})"
        )
    module = importlib.import_module(f"{__package__}.{module_name}")
    return module.load(bundle, num_threads=num_threads)

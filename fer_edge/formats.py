"""Model formats and the backends that run them: the one table that the bundle schema, the
runtime loader, export and the pipeline report read.

It imports no backend (and nothing that imports one), so :mod:`fer_edge.bundle` can read it
and every backend can import the bundle without a cycle.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Backend:
    """An inference backend: its module in :mod:`fer_edge.runtimes`, the Python packages that
    provide it (any one will do) and the bundle formats it runs."""

    module: str
    imports: tuple[str, ...]
    formats: tuple[str, ...]


# bundle format -> the suffix of its main file
FORMAT_SUFFIX = {"pytorch": ".pt", "onnx": ".onnx", "tflite": ".tflite", "openvino": ".xml"}
BACKENDS = {
    "onnxruntime": Backend("onnxruntime", ("onnxruntime",), ("onnx",)),
    "openvino": Backend("openvino", ("openvino",), ("openvino", "onnx", "tflite")),
    "tflite": Backend("tflite", ("ai_edge_litert", "tflite_runtime"), ("tflite",)),
}
# The formats `fer-edge export` writes, each with the backend it is made for (and whose parity
# check it passes); pytorch bundles are for training tools, not the SDK.
NATIVE_BACKEND = {"onnx": "onnxruntime", "tflite": "tflite", "openvino": "openvino"}
EXPORT_FORMATS = tuple(NATIVE_BACKEND)
# Graph files a user may have from elsewhere, by suffix, and the bundle format they become.
GRAPH_FORMATS = {FORMAT_SUFFIX[f]: f for f in EXPORT_FORMATS}
# "auto" prefers, per bundle format, the fastest backend measured on x86 and Arm CPUs.
AUTO_ORDER = ("tflite", "openvino", "onnxruntime")
# What a --backend option accepts.
BACKEND_CHOICES = ("auto", *AUTO_ORDER)


def backend_installed(name: str) -> bool:
    """Whether a Python package that provides backend ``name`` is installed (not imported)."""
    return any(importlib.util.find_spec(m) is not None for m in BACKENDS[name].imports)


def available_backends() -> list[str]:
    return [name for name in BACKENDS if backend_installed(name)]

"""Inference backends behind one interface (no torch): the interface is
:mod:`fer_edge.runtimes.base`, the format/backend table :mod:`fer_edge.formats`, and
:mod:`fer_edge.runtimes.loader` opens a bundle on a backend."""

from fer_edge.formats import AUTO_ORDER, available_backends

from .base import Runtime
from .loader import load_runtime, open_tflite_graph

__all__ = ["AUTO_ORDER", "Runtime", "available_backends", "load_runtime", "open_tflite_graph"]

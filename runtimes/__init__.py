"""Inference backends behind one interface (no torch): see :mod:`fer_edge.runtimes.base`."""

from .base import AUTO_ORDER, Runtime, available_backends, load_runtime

__all__ = ["AUTO_ORDER", "Runtime", "available_backends", "load_runtime"]

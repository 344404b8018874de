"""Inference backends behind one interface (no torch): see :mod:`fer_edge.runtimes.base`."""

from .base import Runtime, available_backends, load_runtime

__all__ = ["Runtime", "available_backends", "load_runtime"]

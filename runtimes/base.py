"""The runtime interface: a loaded bundle that maps a float32 NCHW batch to logits, and the
checks every backend makes of its graph's input and output against the bundle. The backends
(:mod:`fer_edge.formats` lists them) implement it; :mod:`fer_edge.runtimes.loader` opens them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from fer_edge.bundle import Bundle
from fer_edge.errors import BundleError, RuntimeBackendError


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

    def _input_layout(self, shape: tuple, layouts: tuple[str, ...] = ("nchw", "nhwc")) -> str:
        """Which of ``layouts`` the graph's input ``shape`` (batch first) has for the bundle's
        preprocessing. A dimension that is not a positive integer (symbolic, dynamic -1,
        unknown) fits any size; RuntimeBackendError when no layout fits."""
        spec = self.bundle.preprocess
        c, s = spec.channels, spec.size
        per_face = {"nchw": (c, s, s), "nhwc": (s, s, c)}
        dims = tuple(shape)[1:]
        for layout in layouts:
            if len(dims) == 3 and all(
                not (isinstance(d, int) and d > 0) or d == w
                for d, w in zip(dims, per_face[layout], strict=True)
            ):
                return layout
        raise RuntimeBackendError(
            f"{self.bundle.graph.name}: input shape {list(shape)} does not match the bundle's "
            f"preprocess ({c} x {s} x {s}, {' or '.join(layouts).upper()})"
        )

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

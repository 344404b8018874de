"""OpenVINO backend: runs OpenVINO IR (``.xml`` + ``.bin``), ONNX and TFLite files on the CPU.

The inference precision follows the bundle: an fp32 bundle runs in f32, because OpenVINO
otherwise picks bf16 on CPUs that have it and the scores drift from the exported model's.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from fer_edge.bundle import Bundle
from fer_edge.errors import RuntimeBackendError

from .base import GraphRuntime


def _openvino():
    try:
        import openvino
    except ImportError:
        raise RuntimeBackendError(
            "the OpenVINO backend needs openvino (pip install 'fer-edge[openvino]')"
        ) from None
    return openvino


class OpenVinoGraph:
    """One model file compiled for the CPU with a dynamic batch dimension. ``graph(x)`` runs a
    float batch in the graph's own input layout and returns every output as float32."""

    def __init__(
        self,
        path: str | os.PathLike,
        num_threads: int | None = None,
        precision: str = "fp32",
    ):
        ov = _openvino()
        path = Path(path)
        if not path.is_file():
            raise RuntimeBackendError(f"OpenVINO model {path} does not exist")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
            if len(model.inputs) != 1:
                raise RuntimeBackendError(
                    f"{path.name}: expected one input, got {len(model.inputs)}"
                )
            self._loop = not self._make_batch_dynamic(ov, model)
            if self._loop:  # the graph fixes its batch inside (a constant reshape)
                model = core.read_model(str(path))
            config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
            if precision == "fp32":
                config["INFERENCE_PRECISION_HINT"] = "f32"
            if num_threads:
                config["INFERENCE_NUM_THREADS"] = int(num_threads)
            self._compiled = core.compile_model(model, "CPU", config)
        except RuntimeBackendError:
            raise
        except Exception as e:  # OpenVINO raises RuntimeError subclasses with long C++ traces
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeBackendError(f"OpenVINO cannot load {path.name}: {first}") from None
        self.path = path
        port = self._compiled.inputs[0]
        self.input_shape = tuple(
            -1 if d.is_dynamic else d.get_length() for d in port.get_partial_shape()
        )
        if port.get_element_type().is_integral():
            raise RuntimeBackendError(
                f"{path.name} takes integer input; run fully-int8 TFLite models with the "
                "tflite backend"
            )
        self.output_shapes = [
            tuple(-1 if d.is_dynamic else d.get_length() for d in o.get_partial_shape())
            for o in self._compiled.outputs
        ]
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: serialise callers

    @staticmethod
    def _make_batch_dynamic(ov, model) -> bool:
        """Give ``model`` a dynamic batch dimension; False when its outputs do not follow it."""
        shape = model.inputs[0].get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() < 1:
            return False
        dims = [shape[i] for i in range(shape.rank.get_length())]
        dims[0] = ov.Dimension(-1)  # any number of faces in one call
        try:
            model.reshape({model.inputs[0]: ov.PartialShape(dims)})
        except Exception:  # a reshape OpenVINO cannot propagate through the graph
            return False
        return all(
            o.get_partial_shape().rank.is_static and o.get_partial_shape()[0].is_dynamic
            for o in model.outputs
        )

    def _infer(self, x: np.ndarray) -> list[np.ndarray]:
        self._request.infer({0: x})
        return [
            np.array(self._request.get_output_tensor(i).data, dtype=np.float32)
            for i in range(len(self._compiled.outputs))
        ]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        want = self.input_shape[1:]
        if len(x.shape) != len(self.input_shape) or any(
            w not in (-1, g) for w, g in zip(want, x.shape[1:], strict=True)
        ):
            raise RuntimeBackendError(f"{self.path.name}: input must be (N, {want}), got {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        with self._lock:
            if not self._loop:
                return self._infer(x)
            parts = [self._infer(x[i : i + 1]) for i in range(len(x))]
        return [np.concatenate(p) for p in zip(*parts, strict=True)]


class OpenVinoRuntime(GraphRuntime):
    name = "openvino"

    def __init__(self, bundle: Bundle, num_threads: int | None = None):
        super().__init__(bundle, num_threads)
        self.graph = OpenVinoGraph(bundle.graph, num_threads, bundle.precision)
        spec = bundle.preprocess
        shape = self.graph.input_shape[1:]
        nchw, nhwc = (spec.channels, spec.size, spec.size), (spec.size, spec.size, spec.channels)

        def fits(want: tuple[int, int, int]) -> bool:
            return len(shape) == 3 and all(s in (-1, w) for s, w in zip(shape, want, strict=True))

        if fits(nchw):
            self._nhwc = False
        elif fits(nhwc):
            self._nhwc = True
        else:
            raise RuntimeBackendError(
                f"{bundle.graph.name}: input shape {self.graph.input_shape} does not match the "
                f"bundle's preprocess ({spec.channels} x {spec.size} x {spec.size})"
            )
        self._check_num_classes(self.graph.output_shapes[0][-1])


def load(bundle: Bundle, num_threads: int | None = None) -> OpenVinoRuntime:
    return OpenVinoRuntime(bundle, num_threads)

"""ONNX Runtime backend; uses the TensorRT / CUDA execution providers when present (Jetson)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

from fer_edge.bundle import Bundle
from fer_edge.errors import RuntimeBackendError, backend_reason

from .base import Runtime

ADVICE = "check the file with fer-edge verify, or export the model again (fer-edge export)"
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, num_threads: int | None = None):
        super().__init__(bundle, num_threads)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if num_threads:
            opts.intra_op_num_threads = int(num_threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        available = set(ort.get_available_providers())
        providers = [p for p in PREFERRED_PROVIDERS if p in available]
        try:
            # From bytes, not the path: ONNX Runtime then opens no other file (an external-data
            # file a bundle does not list and hash). Its provider fallback prints an "EP Error"
            # banner with print(); stdout carries results (--json), so that goes to stderr.
            graph = bundle.graph.read_bytes()
            with contextlib.redirect_stdout(sys.stderr):
                self.session = ort.InferenceSession(graph, opts, providers=providers)
            self.session.disable_fallback()  # run() would print the same banner
            # names and shapes are decoded here: a name that is not UTF-8 fails now
            inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
            self._input = inputs[0].name if inputs else None
            self._output = outputs[0].name if outputs else None
        except OSError as e:
            raise RuntimeBackendError(f"cannot read {bundle.graph}: {e.strerror or e}") from None
        except Exception as e:  # onnxruntime raises its own untyped errors for bad graphs
            raise RuntimeBackendError(
                f"onnxruntime cannot load {bundle.graph.name}: {backend_reason(e)}; {ADVICE}"
            ) from None
        if len(inputs) != 1 or len(outputs) < 1:
            raise RuntimeBackendError(f"{bundle.graph.name}: expected one input, got {len(inputs)}")
        self._input_layout(tuple(inputs[0].shape or ()), layouts=("nchw",))
        out_shape = tuple(outputs[0].shape or ())
        if len(out_shape) not in (2, 4) or (len(out_shape) == 4 and out_shape[2:] != (1, 1)):
            raise RuntimeBackendError(
                f"{bundle.graph.name}: output shape {list(out_shape)} is not (N, scores); a "
                "classifier bundle's graph must output one row of scores per face"
            )
        self._check_num_classes(out_shape[1])
        # A graph exported with a fixed batch of 1 runs one face at a time.
        self._one_at_a_time = inputs[0].shape[0] == 1

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = self._check_batch(batch)
        if len(x) == 0:
            return np.zeros((0, self.num_outputs), np.float32)
        try:
            if self._one_at_a_time:
                out = np.concatenate(
                    [
                        self.session.run([self._output], {self._input: x[i : i + 1]})[0]
                        for i in range(len(x))
                    ]
                )
            else:
                out = self.session.run([self._output], {self._input: x})[0]
        except Exception as e:  # onnxruntime's own error types, e.g. a graph that fails to run
            raise RuntimeBackendError(
                f"onnxruntime failed on {self.bundle.graph.name}: {backend_reason(e)}"
            ) from None
        return self._check_output(out, len(x))


class OnnxGraph:
    """A raw ``.onnx`` graph with an NCHW input (the face detector's, converted from its
    ``.tflite``): ``graph(x)`` takes NHWC float32, as the TFLite graph does, and returns every
    output as float32. ONNX Runtime sessions may be called from several threads at once."""

    def __init__(self, path, num_threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if num_threads:
            opts.intra_op_num_threads = int(num_threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own error types
            raise RuntimeBackendError(
                f"onnxruntime cannot load {Path(path).name}: {backend_reason(e)}"
            ) from None
        self._input = self.session.get_inputs()[0].name
        self.output_shapes = [tuple(o.shape) for o in self.session.get_outputs()]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
        try:
            return self.session.run(None, {self._input: x})
        except Exception as e:
            raise RuntimeBackendError(f"onnxruntime failed: {backend_reason(e)}") from None


def load(bundle: Bundle, num_threads: int | None = None) -> OnnxRuntime:
    return OnnxRuntime(bundle, num_threads)

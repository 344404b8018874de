"""TFLite backend (LiteRT): ``ai_edge_litert``, or the older ``tflite_runtime`` wheel on boards
that only have that.

Handles what exported ``.tflite`` graphs differ in: NCHW or NHWC input (the layout is read from
the input tensor's shape), float or fully-int8 input and output tensors (quantised here with the
tensor's own scale and zero point), and graphs whose batch size cannot be resized (run one face
at a time instead).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path

import numpy as np

from fer_edge.bundle import Bundle
from fer_edge.errors import RuntimeBackendError, backend_reason

from .base import GraphRuntime


def interpreter_class() -> type:
    """The installed TFLite ``Interpreter`` class."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise RuntimeBackendError(
                "the TFLite backend needs ai-edge-litert (pip install 'fer-edge[tflite]') "
                "or tflite-runtime"
            ) from None
    return Interpreter


_quiet_once = threading.Lock()
_quieted = False


@contextlib.contextmanager
def _no_xnnpack_banner():
    """LiteRT's C++ logger prints ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` on
    the first interpreter of a process, straight to file descriptor 2 (no environment variable
    or Python API turns it off), which put it on every command's stderr. Point fd 2 at
    /dev/null while the first interpreter is made; errors still surface as exceptions."""
    global _quieted
    with _quiet_once:
        if _quieted:
            yield
            return
        _quieted = True
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no usable fd 2 (embedded interpreters)
            yield
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype, copy=False)
    scale, zero = detail["quantization"]
    if not scale:
        raise RuntimeBackendError(
            f"integer input tensor {detail['name']!r} has no quantisation scale"
        )
    info = np.iinfo(dtype)
    return np.clip(np.rint(x / scale + zero), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer):
        return y.astype(np.float32, copy=False)
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * (scale or 1.0)).astype(np.float32)


# The most memory a graph's tensors may declare, summed over every tensor at the batch the file
# declares (the interpreter's arena reuses memory, so it allocates at most this). Checked before
# allocate_tensors: a 64 KB file declaring one 2^31-element tensor used to allocate 8 GB. The
# shipped classifier declares 0.45 MB, the BlazeFace detectors a few MB.
MAX_TENSOR_BYTES = 256 << 20


def declared_tensor_bytes(interpreter) -> int:
    """Bytes the interpreter's tensors declare (shapes are read from the file; nothing is
    allocated yet)."""
    total = 0
    for t in interpreter.get_tensor_details():
        n = 1
        for d in t["shape"]:
            n *= max(int(d), 1)
        total += n * np.dtype(t["dtype"]).itemsize
    return total


class TfliteGraph:
    """One ``.tflite`` file: ``graph(x)`` runs a float batch in the graph's own input layout and
    returns every output as float32, batch first. Used for classifier bundles and the face
    detector alike. Calls are serialised: a TFLite interpreter is not thread-safe."""

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        path = Path(path)
        interpreter = interpreter_class()
        try:
            # Read the bytes ourselves so a missing file is a clear error, not a C++ abort.
            content = path.read_bytes()
        except OSError as e:
            raise RuntimeBackendError(f"cannot read TFLite model {path}: {e}") from None
        if len(content) < 16 or content[4:8] != b"TFL3":
            raise RuntimeBackendError(
                f"{path.name} is not a TFLite flatbuffer (no TFL3 identifier)"
            )
        self._content = content  # the interpreter reads from this buffer; keep it alive
        self._new_interpreter = lambda: interpreter(model_content=content, num_threads=num_threads)
        try:
            with _no_xnnpack_banner():
                self._it = self._new_interpreter()
                declared = declared_tensor_bytes(self._it)
                if declared > MAX_TENSOR_BYTES:
                    raise RuntimeBackendError(
                        f"{path.name} declares {declared / 2**20:.0f} MB of tensors, more than "
                        f"the {MAX_TENSOR_BYTES >> 20} MB a model may take; refused before "
                        "allocating"
                    )
                self._it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise RuntimeBackendError(
                f"TFLite cannot load {path.name}: {backend_reason(e)}; run it with another "
                "backend (backend='openvino' runs .tflite files too) or export it again"
            ) from None
        self.path = path
        inputs = self._it.get_input_details()
        if len(inputs) != 1:
            raise RuntimeBackendError(f"{path.name}: expected one input tensor, got {len(inputs)}")
        self._input = inputs[0]
        self.input_shape = tuple(int(v) for v in self._input["shape"])
        self.input_dtype = np.dtype(self._input["dtype"])
        self.output_shapes = [
            tuple(int(v) for v in d["shape"]) for d in self._it.get_output_details()
        ]
        self._batch = self.input_shape[0]
        self._loop = False  # set when the graph refuses a batch resize
        self._lock = threading.Lock()

    def _invoke(self, x: np.ndarray) -> list[np.ndarray]:
        self._it.set_tensor(self._input["index"], _quantize(x, self._input))
        self._it.invoke()
        return [
            _dequantize(self._it.get_tensor(d["index"]), d) for d in self._it.get_output_details()
        ]

    def _resize(self, n: int) -> bool:
        try:
            self._it.resize_tensor_input(self._input["index"], [n, *self.input_shape[1:]])
            self._it.allocate_tensors()
        except (ValueError, RuntimeError):
            # A failed resize leaves the interpreter unusable: start again from the file.
            self._it = self._new_interpreter()
            self._it.allocate_tensors()
            self._batch = self.input_shape[0]
            return False
        self._batch = n
        return True

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        if tuple(x.shape[1:]) != self.input_shape[1:]:
            raise RuntimeBackendError(
                f"{self.path.name}: input must be (N, {', '.join(map(str, self.input_shape[1:]))}), "
                f"got {x.shape}"
            )
        n = len(x)
        with self._lock:
            if not self._loop and n != self._batch and not self._resize(n):
                self._loop = True
            if not self._loop:
                try:
                    out = self._invoke(x)
                    if all(len(o) == n for o in out):
                        return out
                except (ValueError, RuntimeError):
                    pass
                # The graph hard-codes its batch (a fixed reshape inside): one sample at a time.
                self._loop = True
            if self._batch != 1 and not self._resize(1):
                raise RuntimeBackendError(f"{self.path.name}: cannot run with batch size 1")
            parts = [self._invoke(x[i : i + 1]) for i in range(n)]
        return [np.concatenate(p) for p in zip(*parts, strict=True)]


class TfliteRuntime(GraphRuntime):
    name = "tflite"

    def __init__(self, bundle: Bundle, num_threads: int | None = None):
        super().__init__(bundle, num_threads)
        self.graph = TfliteGraph(bundle.graph, num_threads)
        self._nhwc = self._input_layout(self.graph.input_shape) == "nhwc"
        self._check_num_classes(self.graph.output_shapes[0][-1])


def load(bundle: Bundle, num_threads: int | None = None) -> TfliteRuntime:
    return TfliteRuntime(bundle, num_threads)

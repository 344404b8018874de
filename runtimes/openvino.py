"""OpenVINO backend: runs OpenVINO IR (``.xml`` + ``.bin``), ONNX and TFLite files on the CPU.

The compile settings follow the bundle: ``model.json`` ``model.runtime_hints.openvino`` (written
by ``fer-edge export``) is what this backend passes to ``compile_model``, and a bundle that
records none gets :data:`PRECISION_HINTS`. OpenVINO otherwise picks bf16 on CPUs that have it
(AMD Zen 4 and later, Intel Sapphire Rapids and later), where the scores drift from the ones the
export's parity check measured, and some INT8 graphs find no bf16 kernel at all. f32 keeps an
INT8 graph's int8 convolutions: the hint only sets the precision of the layers that are not
quantised.

The input is made static in channels and size (dynamic in batch only) before compiling: an IR
whose every dimension is dynamic leaves the CPU plugin to choose kernels without knowing the
shapes, which fails on some CPUs.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import threading
from pathlib import Path

import numpy as np

from fer_edge.bundle import Bundle
from fer_edge.errors import BundleError, RuntimeBackendError, backend_reason

from .base import GraphRuntime


def import_openvino():
    """``import openvino`` with its telemetry off: the SDK sends nothing and writes nothing
    outside the folders a user chose.

    ``import openvino`` imports ``openvino.tools.ovc``, which sends a Google Analytics event on
    every import and writes ``~/intel/`` (a client id and usage counters) through the
    ``openvino_telemetry`` package. OpenVINO's documented opt-out (``opt_in_out --opt_out``)
    itself writes ``~/intel/openvino_telemetry``; but OpenVINO falls back to its own no-op
    ``telemetry_stub`` when ``openvino_telemetry`` cannot be imported. So the package is hidden
    while openvino is first imported, then made importable again for code that wants it. (A
    process that imported openvino before fer-edge keeps whatever telemetry it set up.)"""
    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    hidden = "openvino_telemetry" not in sys.modules
    if hidden:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # import -> ImportError
    try:
        import openvino
    except ImportError:
        raise RuntimeBackendError(
            "the OpenVINO backend needs openvino (pip install 'fer-edge[openvino]')"
        ) from None
    finally:
        if hidden:
            del sys.modules["openvino_telemetry"]
    return openvino


# What a bundle without ``runtime_hints.openvino`` is compiled with, and what ``fer-edge export``
# records: every bundle's parity is checked at f32.
PRECISION_HINTS: dict[str, str] = {"INFERENCE_PRECISION_HINT": "f32"}
# The compile settings a bundle may ask for, and the values each takes: a bundle is user input,
# and anything else would reach OpenVINO's C++ unchecked.
ALLOWED_HINTS = {"INFERENCE_PRECISION_HINT": ("f32", "bf16", "f16")}
ADVICE = (
    "run it with another backend (backend='tflite' or 'onnxruntime'; fer-edge --backend), or "
    "export it again with fer-edge export --target openvino"
)


log = logging.getLogger("fer_edge.runtimes")
INT8_KERNELS = {"u8", "i8"}


def bundle_hints(bundle: Bundle) -> dict[str, str]:
    """The compile settings ``bundle`` records for OpenVINO (validated), or the defaults."""
    hints = (bundle.meta["model"].get("runtime_hints") or {}).get("openvino")
    if hints is None:
        return dict(PRECISION_HINTS)
    if not isinstance(hints, dict):
        raise BundleError("model.json model.runtime_hints.openvino must be an object")
    for key, value in hints.items():
        if key not in ALLOWED_HINTS or value not in ALLOWED_HINTS[key]:
            allowed = "; ".join(f"{k}: {', '.join(v)}" for k, v in ALLOWED_HINTS.items())
            raise BundleError(
                f"model.json model.runtime_hints.openvino has {key}={value!r}; allowed: {allowed}"
            )
    return {**PRECISION_HINTS, **hints}


def cpu_precisions() -> list[str]:
    """The inference precisions OpenVINO's CPU plugin can choose on this CPU: f32 always, bf16
    where the CPU has native bf16 (then it is OpenVINO's default)."""
    caps = import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return ["f32", *(["bf16"] if "BF16" in caps else [])]


class OpenVinoGraph:
    """One model file compiled for the CPU with a dynamic batch dimension. ``graph(x)`` runs a
    float batch in the graph's own input layout and returns every output as float32.

    ``hints`` are OpenVINO compile settings (default :data:`PRECISION_HINTS`). ``input_shapes``
    are the per-face shapes the caller can feed (e.g. NCHW and NHWC): the first that fits the
    graph's input fixes every dimension but the batch before compiling."""

    def __init__(
        self,
        path: str | os.PathLike,
        num_threads: int | None = None,
        hints: dict[str, str] | None = None,
        input_shapes: tuple[tuple[int, ...], ...] = (),
    ):
        ov = import_openvino()
        path = Path(path)
        if not path.is_file():
            raise RuntimeBackendError(f"OpenVINO model {path} does not exist")
        core = ov.Core()
        config: dict[str, object] = {
            "PERFORMANCE_HINT": "LATENCY",
            **(PRECISION_HINTS if hints is None else hints),
        }
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = int(num_threads)
        try:
            model = self._read(ov, core, path)
            if len(model.inputs) != 1:
                raise RuntimeBackendError(
                    f"{path.name}: expected one input, got {len(model.inputs)}"
                )
            per_face = self._fitting_shape(ov, model, input_shapes)
            self._loop = not self._make_batch_dynamic(ov, model, per_face)
            if self._loop:  # the graph fixes its batch inside (a constant reshape)
                model = self._read(ov, core, path)
                if per_face is not None:
                    model.reshape({model.inputs[0]: ov.PartialShape([1, *per_face])})
            self._compiled = core.compile_model(model, "CPU", config)
        except RuntimeBackendError:
            raise
        except Exception as e:  # OpenVINO raises RuntimeError subclasses with long C++ traces
            precision = config.get("INFERENCE_PRECISION_HINT", "the CPU's default precision")
            raise RuntimeBackendError(
                f"OpenVINO cannot compile {path.name} for the CPU at {precision}: "
                f"{backend_reason(e)}; {ADVICE}"
            ) from None
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
    def _read(ov, core, path: Path):
        """Read the model from bytes fer-edge opened itself: IR as the ``.xml`` and the ``.bin``
        beside it (which a bundle must list and hash), ONNX as the one file, so OpenVINO opens
        no other file (an ONNX external-data file nobody hashed). TFLite is one flatbuffer."""
        if path.suffix == ".xml":
            weights = np.fromfile(path.with_suffix(".bin"), dtype=np.uint8)
            return core.read_model(path.read_bytes(), ov.Tensor(weights))
        if path.suffix == ".onnx":
            return core.read_model(path.read_bytes())
        return core.read_model(str(path))

    @staticmethod
    def _fitting_shape(ov, model, candidates) -> tuple[int, ...] | None:
        """The first per-face shape in ``candidates`` that the input's partial shape admits,
        when some of its non-batch dimensions are dynamic; None otherwise."""
        shape = model.inputs[0].get_partial_shape()
        if shape.rank.is_static and all(
            shape[i].is_static for i in range(1, shape.rank.get_length())
        ):
            return None
        for per_face in candidates:
            if ov.PartialShape([-1, *per_face]).compatible(shape):
                return tuple(per_face)
        return None

    @staticmethod
    def _make_batch_dynamic(ov, model, per_face: tuple[int, ...] | None) -> bool:
        """Give ``model`` a dynamic batch dimension (and ``per_face`` for the rest); False when
        its outputs do not follow the batch."""
        shape = model.inputs[0].get_partial_shape()
        if per_face is not None:
            dims = [ov.Dimension(-1), *(ov.Dimension(int(d)) for d in per_face)]
        elif shape.rank.is_dynamic or shape.rank.get_length() < 1:
            return False
        else:
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

    def layer_precisions(self) -> dict[str, set[str]]:
        """Layer type -> the precisions its compiled kernels run in (e.g. ``Convolution``:
        ``{"u8"}`` for an INT8 graph), as the CPU plugin chose them on this CPU."""
        found: dict[str, set[str]] = {}
        for op in self._compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            layer, precision = info["layerType"].astype(str), info["runtimePrecision"].astype(str)
            found.setdefault(layer, set()).add(precision)
        return found

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

    def __init__(
        self, bundle: Bundle, num_threads: int | None = None, hints: dict[str, str] | None = None
    ):
        super().__init__(bundle, num_threads)
        spec = bundle.preprocess
        nchw, nhwc = (spec.channels, spec.size, spec.size), (spec.size, spec.size, spec.channels)
        self.hints = bundle_hints(bundle) if hints is None else hints
        self.graph = OpenVinoGraph(bundle.graph, num_threads, self.hints, (nchw, nhwc))
        self._nhwc = self._input_layout(self.graph.input_shape) == "nhwc"
        self._check_num_classes(self.graph.output_shapes[0][-1])
        self.int8_convolutions = self._check_int8()

    def _check_int8(self) -> bool | None:
        """For an INT8 bundle: whether the CPU plugin runs its convolutions in int8 here. On x86
        it does; on aarch64 (OpenVINO's ARM CPU plugin, 2026.4) they run in f32 between
        decomposed FakeQuantize ops: the same fake-quantised model (the shipped IR's scores
        match x86's there, docs/results/arm64.json), without int8's speed. Said once per load,
        on the ``fer_edge.runtimes`` logger."""
        if self.bundle.precision != "int8":
            return None
        convs = self.graph.layer_precisions().get("Convolution", set())
        if not convs or convs <= INT8_KERNELS:
            return True
        log.warning(
            "OpenVINO runs the INT8 graph %s with its convolutions in %s on this CPU (%s), not "
            "in int8: no int8 speed-up here; run INT8 bundles with the tflite backend, or the "
            "FP32 bundle (model='default' does on aarch64)",
            self.bundle.graph.name,
            "/".join(sorted(convs)),
            platform.machine(),
        )
        return False


def load(bundle: Bundle, num_threads: int | None = None) -> OpenVinoRuntime:
    return OpenVinoRuntime(bundle, num_threads)

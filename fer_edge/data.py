"""FER dataset readers (numpy and OpenCV only).

Layouts read by :func:`load_dataset`:
- split folders: ``root/{train,val,test}/<class>/*`` (pass ``split``),
- a class-folder root: ``root/<class>/*``,
- a plain image folder (no labels, for self-supervised pretraining): ``root/*.jpg``,
- the Kaggle ``fer2013.csv`` (``emotion,pixels,Usage``; ``split`` picks the Usage),
- a label list CSV: a path and a label column with optional ``valence,arousal`` columns (see
  :data:`LIST_COLUMNS` for the accepted names, e.g. AffectNet's
  ``subDirectory_filePath,...,expression,valence,arousal``); paths are relative to the CSV's
  folder. A label is a class name or an index into the model's labels (alphabetical:
  angry, disgust, fear, happy, neutral, sad, surprise; not AffectNet's numeric codes). In a list
  with valence/arousal columns, a row whose label is empty or negative is kept unlabelled
  (label -1) for its valence/arousal; an empty valence or arousal cell is unknown (NaN).
- clips (video frames, for temporal self-supervision): ``root/clips.csv`` with columns
  ``clip,identity`` (optional ``label``), one row per clip; ``clip`` is the folder of the clip's
  frames relative to ``root``, ``identity`` names the person in it. Frames are the folder's
  images in time order (numeric file names by value, others by name).

Class names are matched to the model's labels through :mod:`fer_edge.labels` aliases; classes the
model does not know are skipped and counted by name. Unreadable images are skipped and counted.
Decoded images are cached as one uint8 array keyed by the file list, so a second load is fast.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import imagesize
import numpy as np

from . import atomic
from .errors import DatasetError, InputError
from .labels import FER2013_CSV_ORDER, FER_LABELS, canonical
from .preprocess import MAX_SIDE, PreprocessSpec, resize_face

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
SPLITS = ("train", "val", "test")
KAGGLE_USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
MAX_IMAGE_BYTES = 64 << 20  # a face image larger than this is not a face image
# Pixels an image may declare in its header (67 MP, about 200 MB as BGR). A few hundred KB of PNG
# can declare 20000 x 20000 pixels and take minutes and gigabytes to decode.
MAX_IMAGE_PIXELS = 1 << 26
CACHE_VERSION = 1
# Label-list column names (any case; the first present wins): AffectNet calls the path
# ``subDirectory_filePath`` and the class ``expression``.
LIST_COLUMNS = {
    "path": ("path", "file", "filename", "filepath", "image", "subdirectory_filepath"),
    "label": ("label", "expression", "emotion", "class"),
    "valence": ("valence",),
    "arousal": ("arousal",),
}


@dataclass
class FaceDataset:
    """Decoded face crops at model input size, with labels.

    ``images``: uint8 (N, S, S, C); ``labels``: int64 (N,), -1 where unlabelled;
    ``valence``/``arousal``: float32 (N,) with NaN where unknown, or None.
    ``clip``/``frame``/``identity``: int64 (N,) for clip datasets (clip number, position in time
    within the clip, person number), else None.
    """

    images: np.ndarray
    labels: np.ndarray
    label_names: tuple[str, ...]
    paths: list[str]
    source: str
    skipped_classes: dict[str, int] = field(default_factory=dict)
    n_unreadable: int = 0
    valence: np.ndarray | None = None
    arousal: np.ndarray | None = None
    clip: np.ndarray | None = None
    frame: np.ndarray | None = None
    identity: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels[self.labels >= 0], minlength=len(self.label_names))
        return {n: int(c) for n, c in zip(self.label_names, counts, strict=True)}

    def subset(self, index: np.ndarray) -> FaceDataset:
        index = np.asarray(index)
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return FaceDataset(
            images=self.images[index],
            labels=self.labels[index],
            label_names=self.label_names,
            paths=[self.paths[i] for i in index],
            source=self.source,
            skipped_classes=dict(self.skipped_classes),
            n_unreadable=self.n_unreadable,
            valence=pick(self.valence),
            arousal=pick(self.arousal),
            clip=pick(self.clip),
            frame=pick(self.frame),
            identity=pick(self.identity),
        )

    def summary(self) -> str:
        s = f"{len(self)} faces from {self.source}"
        if self.skipped_classes:
            s += "; skipped unknown classes " + ", ".join(
                f"{k} ({v})" for k, v in sorted(self.skipped_classes.items())
            )
        if self.n_unreadable:
            s += f"; skipped {self.n_unreadable} unreadable images"
        return s


def stratified_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of a class-stratified random ``fraction`` of ``labels`` (at least 1 per class)."""
    if not 0 < fraction <= 1:
        raise InputError(f"fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == c)
        k = max(1, round(len(idx) * fraction))
        out.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


# ---------------------------------------------------------------------------- decoding


# The image formats fer-edge reads, told by their first bytes (a file's name says nothing: a
# Radiance HDR or an OpenEXR file named .png still reaches OpenCV's HDR decoder, which decodes to
# float32), with the most bytes a decoded pixel of each can take: 16-bit RGBA PNG, float32 RGBA
# TIFF. OpenCV decodes many more formats (HDR, EXR, JPEG 2000, PFM, Sun raster, GDAL); none is a
# face dataset's format, and each is attack surface.
IMAGE_FORMATS: dict[str, tuple[tuple[bytes, ...], int]] = {
    "jpeg": ((b"\xff\xd8\xff",), 3),
    "png": ((b"\x89PNG\r\n\x1a\n",), 8),
    "bmp": ((b"BM",), 4),
    "webp": ((b"RIFF",), 4),  # and "WEBP" at offset 8, checked below
    "tiff": ((b"II*\x00", b"MM\x00*"), 16),
    "pnm": ((b"P2", b"P3", b"P5", b"P6"), 6),
}
# Memory a decoded image may take: width x height x the format's bytes per pixel, known from
# the header before anything is decoded (a 64-MP JPEG fits, so does a 33-MP 16-bit PNG).
MAX_DECODED_BYTES = 1 << 28


def image_format(head: bytes) -> str | None:
    """The format of an image from its first 12 bytes, if it is one fer-edge reads."""
    for name, (magics, _) in IMAGE_FORMATS.items():
        if head.startswith(magics) and (name != "webp" or head[8:12] == b"WEBP"):
            return name
    return None


def declared_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) from the image file's header, without decoding; None if unknown."""
    try:
        w, h = imagesize.get(path)
    except Exception:  # a malformed header: unknown
        return None
    return (w, h) if w > 0 and h > 0 else None


def image_problem(path: str | os.PathLike) -> tuple[np.ndarray | None, str]:
    """Decode an image file to uint8 gray/BGR/BGRA: ``(image, "")``, or ``(None, reason)`` when
    it cannot be used. 16-bit images (PNG, TIFF) are scaled to 8 bit. Refused before decoding:
    files over :data:`MAX_IMAGE_BYTES`, files that are not one of :data:`IMAGE_FORMATS` by their
    first bytes (whatever their name), and headers that declare no size, more than
    :data:`MAX_IMAGE_PIXELS` pixels, a side over ``MAX_SIDE`` or a decoded size over
    :data:`MAX_DECODED_BYTES`."""
    try:
        # Regular files only: opening a FIFO or a device named x.jpg would block or never end.
        if not os.path.isfile(path):
            return None, "not a regular file"
        nbytes = os.path.getsize(path)
        if nbytes > MAX_IMAGE_BYTES:
            return None, f"{nbytes >> 20} MB is over the {MAX_IMAGE_BYTES >> 20} MB limit"
        with open(path, "rb") as f:
            fmt = image_format(f.read(12))
        if fmt is None:
            return None, "not a JPEG, PNG, BMP, WebP, TIFF or PNM file (by its first bytes)"
        size = declared_size(path)
        if size is None:
            return None, f"its {fmt.upper()} header declares no image size"
        if max(size) > MAX_SIDE or size[0] * size[1] > MAX_IMAGE_PIXELS:
            return None, (
                f"{size[0]}x{size[1]} px is over the size limit (sides up to {MAX_SIDE} px, "
                f"{MAX_IMAGE_PIXELS:,} pixels)"
            )
        if size[0] * size[1] * IMAGE_FORMATS[fmt][1] > MAX_DECODED_BYTES:
            return None, (
                f"{size[0]}x{size[1]} px of {fmt.upper()} may decode to more than "
                f"{MAX_DECODED_BYTES >> 20} MB"
            )
        buf = np.fromfile(path, dtype=np.uint8)
    except ValueError:  # a NUL byte in the path
        return None, "not a usable file name"
    except OSError as e:
        return None, e.strerror or str(e)
    if buf.size == 0:
        return None, "the file is empty"
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is not None and img.dtype == np.uint16:
        # 16-bit PNG/TIFF: the top 8 bits are the 8-bit image (65535 -> 255).
        img = (img >> 8).astype(np.uint8)
    if img is None or img.dtype != np.uint8 or img.size == 0:
        return None, "cannot decode this image"
    return img, ""


def read_image(path: str | os.PathLike) -> np.ndarray | None:
    """Decode an image file to uint8 gray/BGR/BGRA, or None if it cannot be used (see
    :func:`image_problem` for why)."""
    return image_problem(path)[0]


def _decode_all(
    paths: list[str], spec: PreprocessSpec, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Decode and resize every path; returns (images, ok mask)."""
    out = np.zeros((len(paths), spec.size, spec.size, spec.channels), np.uint8)
    ok = np.zeros(len(paths), bool)

    def work(i: int) -> None:
        img = read_image(paths[i])
        if img is None:
            return
        try:
            out[i] = resize_face(img, spec)
            ok[i] = True
        except InputError:
            pass

    workers = min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(workers) as pool:  # OpenCV releases the GIL while decoding
        for done, _ in enumerate(pool.map(work, range(len(paths))), 1):
            if progress and (done % 4096 == 0 or done == len(paths)):
                print(f"\rdecoding {done}/{len(paths)}", end="", file=sys.stderr, flush=True)
    if progress and paths:
        print(file=sys.stderr)
    return out, ok


# ------------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    return Path(os.environ.get("FER_EDGE_CACHE", Path.home() / ".cache" / "fer-edge"))


def _cache_key(kind: str, entries: list[tuple], spec: PreprocessSpec, extra: str = "") -> str:
    h = hashlib.sha256()
    h.update(f"{CACHE_VERSION}|{kind}|{spec.size}|{spec.channels}|{extra}".encode())
    for e in entries:
        h.update(repr(e).encode())
    return h.hexdigest()[:32]


def _cached_decode(
    key: str, paths: list[str], spec: PreprocessSpec, use_cache: bool, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    path = cache_dir() / f"{key}.npz"
    if use_cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return z["images"], z["ok"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt below
    images, ok = _decode_all(paths, spec, progress)
    if use_cache:
        try:
            with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez(f, images=images, ok=ok)
        except OSError:
            pass  # caching is an optimisation; a read-only home must not stop training
    return images, ok


# ----------------------------------------------------------------------------- readers


def _match_label(raw: str, label_names: tuple[str, ...]) -> str | None:
    name = canonical(raw)
    return name if name in label_names else None


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _from_files(
    items: list[tuple[str, int, float, float]],
    spec: PreprocessSpec,
    label_names: tuple[str, ...],
    source: str,
    skipped: dict[str, int],
    use_cache: bool,
    progress: bool,
    has_va: bool = False,
) -> FaceDataset:
    paths = [it[0] for it in items]
    entries = []
    for p in paths:
        try:
            st = os.stat(p)
            entries.append((p, st.st_size, st.st_mtime_ns))
        except (OSError, ValueError):  # ValueError: a NUL byte in the path
            entries.append((p, -1, -1))
    key = _cache_key("files", entries, spec, ",".join(label_names) + repr([it[1] for it in items]))
    images, ok = _cached_decode(key, paths, spec, use_cache, progress)
    keep = np.flatnonzero(ok)
    labels = np.array([it[1] for it in items], np.int64)
    va = np.array([(it[2], it[3]) for it in items], np.float32).reshape(-1, 2)
    return FaceDataset(
        images=images[keep],
        labels=labels[keep],
        label_names=label_names,
        paths=[paths[i] for i in keep],
        source=source,
        skipped_classes=skipped,
        n_unreadable=int(len(paths) - len(keep)),
        valence=va[keep, 0] if has_va else None,
        arousal=va[keep, 1] if has_va else None,
    )


def _read_class_folders(root: Path, label_names, spec, use_cache, progress) -> FaceDataset:
    items, skipped = [], {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = _list_images(d)
        name = _match_label(d.name, label_names)
        if name is None:
            if files:
                skipped[d.name] = skipped.get(d.name, 0) + len(files)
            continue
        y = label_names.index(name)
        items += [(str(f), y, np.nan, np.nan) for f in files]
    if not items:
        known = ", ".join(label_names)
        raise DatasetError(f"{root} holds no images in class folders named after labels ({known})")
    return _from_files(items, spec, label_names, str(root), skipped, use_cache, progress)


def _read_kaggle_csv(path: Path, split, label_names, spec) -> FaceDataset:
    usage = None
    if split is not None:
        if split not in KAGGLE_USAGE:
            raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
        usage = KAGGLE_USAGE[split]
    images, labels, skipped, bad = [], [], {}, 0
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        for row in reader:
            if usage is not None and (row.get("Usage") or "").strip() != usage:
                continue
            try:
                code = int(row["emotion"])
                if not 0 <= code < len(FER2013_CSV_ORDER):
                    raise ValueError(f"emotion code {code} out of range")
                name = FER2013_CSV_ORDER[code]
                pixels = np.array(row["pixels"].split(), dtype=np.int64)
                side = int(round(np.sqrt(pixels.size)))
                if (
                    side * side != pixels.size
                    or side == 0
                    or pixels.min() < 0
                    or pixels.max() > 255
                ):
                    raise ValueError("pixel count is not a square or values out of range")
            except (KeyError, ValueError, IndexError, AttributeError, TypeError, OverflowError):
                # a missing or short field (None), a pixel past int64 (10^23), junk
                bad += 1
                continue
            if name not in label_names:
                skipped[name] = skipped.get(name, 0) + 1
                continue
            images.append(resize_face(pixels.astype(np.uint8).reshape(side, side), spec))
            labels.append(label_names.index(name))
    if not labels:
        raise DatasetError(
            f"{path}: no usable rows" + (f" with Usage == {usage!r}" if usage else "")
        )
    return FaceDataset(
        images=np.stack(images),
        labels=np.array(labels, np.int64),
        label_names=label_names,
        paths=[f"{path}#{i}" for i in range(len(labels))],
        source=str(path) + (f" ({usage})" if usage else ""),
        skipped_classes=skipped,
        n_unreadable=bad,
    )


def _list_columns(path: Path, fieldnames) -> dict[str, str]:
    """Role (path, label, valence, arousal) -> the lower-cased column that holds it."""
    cols = {c.strip().lower() for c in (fieldnames or []) if c}
    found = {}
    for role, names in LIST_COLUMNS.items():
        hit = next((n for n in names if n in cols), None)
        if hit is not None:
            found[role] = hit
    if not {"path", "label"} <= found.keys():
        raise DatasetError(
            f"{path}: a label list needs a path column ({', '.join(LIST_COLUMNS['path'])}) and a "
            f"label column ({', '.join(LIST_COLUMNS['label'])}); it has {sorted(cols)}"
        )
    if ("valence" in found) != ("arousal" in found):
        raise DatasetError(
            f"{path}: a label list needs both 'valence' and 'arousal' columns or none"
        )
    return found


_INDEX = re.compile(r"-?[0-9]{1,9}")


def _read_label_list(path: Path, label_names, spec, use_cache, progress) -> FaceDataset:
    items, skipped, bad = [], {}, 0
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        col = _list_columns(path, reader.fieldnames)
        has_va = "valence" in col
        for row in reader:
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            try:
                v = float(row[col["valence"]]) if has_va and row.get(col["valence"]) else np.nan
                a = float(row[col["arousal"]]) if has_va and row.get(col["arousal"]) else np.nan
            except ValueError:
                bad += 1
                continue
            raw = row.get(col["label"], "")
            # ASCII digits only ("³".isdigit() is true) and short: int() of 5000 digits raises
            index = _INDEX.fullmatch(raw)
            unlabelled = raw == "" or (index is not None and raw.startswith("-"))
            if unlabelled and has_va and not (np.isnan(v) and np.isnan(a)):
                y = -1  # no class, but valence/arousal to learn from
            elif index is not None:
                i = int(raw)
                if not 0 <= i < len(label_names):
                    skipped[raw] = skipped.get(raw, 0) + 1
                    continue
                y = i
            else:
                name = _match_label(raw, label_names)
                if name is None:
                    skipped[raw] = skipped.get(raw, 0) + 1
                    continue
                y = label_names.index(name)
            p = Path(row.get(col["path"], ""))
            p = p if p.is_absolute() else path.parent / p
            items.append((str(p), y, v, a))
    if not items:
        raise DatasetError(f"{path}: no rows with a known label")
    ds = _from_files(items, spec, label_names, str(path), skipped, use_cache, progress, has_va)
    ds.n_unreadable += bad
    return ds


def _read_plain_folder(root: Path, label_names, spec, use_cache, progress) -> FaceDataset:
    files = _list_images(root)
    items = [(str(f), -1, np.nan, np.nan) for f in files]
    return _from_files(items, spec, label_names, str(root), {}, use_cache, progress)


def _frame_order(path: Path) -> tuple:
    return (0, int(path.stem), path.name) if path.stem.isdigit() else (1, 0, path.name)


def _read_clip_folders(root: Path, label_names, spec, use_cache, progress) -> FaceDataset:
    listing = root / "clips.csv"
    with open(listing, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower() for c in (reader.fieldnames or []) if c}
        if not {"clip", "identity"} <= cols:
            raise DatasetError(f"{listing} needs 'clip' and 'identity' columns, has {sorted(cols)}")
        rows = [{k.strip().lower(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    items, clip, frame, person, people, seen = [], [], [], [], {}, []
    for line, row in enumerate(rows, start=2):
        folder = (root / row["clip"]).resolve()
        where = f"{listing} line {line}"
        if not row["clip"] or not row["identity"]:
            raise DatasetError(f"{where}: empty clip or identity")
        if folder in seen:
            raise DatasetError(f"{where}: clip {row['clip']!r} is listed twice")
        if not folder.is_relative_to(root.resolve()) or not folder.is_dir():
            raise DatasetError(f"{where}: clip folder {row['clip']!r} is not a folder in {root}")
        frames = sorted(_list_images(folder), key=_frame_order)
        if not frames:
            raise DatasetError(f"{where}: clip folder {row['clip']!r} holds no images")
        name = _match_label(row["label"], label_names) if row.get("label") else None
        y = -1 if name is None else label_names.index(name)
        items += [(str(p), y, np.nan, np.nan) for p in frames]
        clip += [len(seen)] * len(frames)
        frame += range(len(frames))
        person += [people.setdefault(row["identity"], len(people))] * len(frames)
        seen.append(folder)
    if not items:
        raise DatasetError(f"{listing} lists no clips")
    ds = _from_files(items, spec, label_names, str(root), {}, use_cache, progress)
    decoded = np.isin([it[0] for it in items], ds.paths)  # unreadable frames were dropped
    ds.clip, ds.frame, ds.identity = (np.array(a, np.int64)[decoded] for a in (clip, frame, person))
    return ds


def _read_csv(path: Path, split, label_names, spec, use_cache, progress) -> FaceDataset:
    if is_kaggle_csv(path):
        return _read_kaggle_csv(path, split, label_names, spec)
    if split is not None:
        raise DatasetError(f"{path}: a label list has no splits; drop split={split!r}")
    return _read_label_list(path, label_names, spec, use_cache, progress)


def _csv_columns(path: Path) -> set[str]:
    """The lower-cased column names of a CSV's header row."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return {c.strip().lower() for c in next(csv.reader(f), [])}
    except (UnicodeDecodeError, csv.Error) as e:  # binary junk, a field over csv's limit
        raise DatasetError(f"{path} is not a readable UTF-8 CSV file: {e}") from None
    except OSError as e:
        raise DatasetError(f"{path} cannot be read: {e.strerror or e}") from None


def is_kaggle_csv(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the Kaggle ``fer2013.csv`` (``emotion`` and ``pixels`` columns), whose
    Usage column holds the train/val/test splits."""
    path = Path(path)
    return (
        path.is_file()
        and path.suffix.lower() == ".csv"
        and {"emotion", "pixels"} <= _csv_columns(path)
    )


def holds_split(path: str | os.PathLike, split: str) -> bool:
    """Whether ``path`` holds ``split``: a split root with a ``split`` folder, or the Kaggle CSV
    (every split is a Usage value). The one place that tells a split root from a plain one."""
    path = Path(path)
    return (path / split).is_dir() if path.is_dir() else is_kaggle_csv(path)


def load_dataset(
    path: str | os.PathLike,
    split: str | None = None,
    *,
    labels: tuple[str, ...] | list[str] = FER_LABELS,
    spec: PreprocessSpec | None = None,
    cache: bool = True,
    progress: bool = False,
) -> FaceDataset:
    """Read any supported layout into a :class:`FaceDataset` at ``spec``'s size and channels."""
    spec = spec or PreprocessSpec()
    label_names = tuple(labels)
    root = Path(path)
    if not root.exists():
        raise DatasetError(f"dataset path {str(root)!r} does not exist")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DatasetError(
                f"{root} is a file but not a .csv (Kaggle fer2013.csv or a label list)"
            )
        try:
            return _read_csv(root, split, label_names, spec, cache, progress)
        except (UnicodeDecodeError, csv.Error) as e:  # binary junk, a field over csv's limit
            raise DatasetError(f"{root} is not a readable UTF-8 CSV file: {e}") from None
        except PermissionError as e:
            raise DatasetError(f"{e.filename or root} cannot be read: permission denied") from None
    try:
        return _load_folder(root, split, label_names, spec, cache, progress)
    except PermissionError as e:
        raise DatasetError(f"{e.filename or root} cannot be read: permission denied") from None


def _load_folder(root: Path, split, label_names, spec, cache, progress) -> FaceDataset:
    if (root / "clips.csv").is_file():
        if split is not None:
            raise DatasetError(f"{root} holds clips (clips.csv), not splits; drop split={split!r}")
        return _read_clip_folders(root, label_names, spec, cache, progress)
    subdirs = {p.name for p in root.iterdir() if p.is_dir()}
    if split is not None:
        if split not in subdirs:
            raise DatasetError(
                f"{root} has no {split!r} folder (has: {', '.join(sorted(subdirs)) or 'none'})"
            )
        root = root / split
    elif subdirs and subdirs <= set(SPLITS) | {"_cache"}:
        raise DatasetError(
            f"{root} holds split folders ({', '.join(sorted(subdirs))}): choose one with split/--split"
        )
    if not any(p.is_dir() for p in root.iterdir()):
        return _read_plain_folder(root, label_names, spec, cache, progress)
    return _read_class_folders(root, label_names, spec, cache, progress)


def write_json(path: str | os.PathLike, obj: object) -> None:
    atomic.write_text(path, json.dumps(obj, indent=2) + "\n")


def _limit_per_class(ds: FaceDataset, per_class: int | None) -> FaceDataset:
    if not per_class:
        return ds
    keep = np.concatenate(
        [np.flatnonzero(ds.labels == c)[:per_class] for c in range(len(ds.label_names))]
    )
    return ds.subset(np.sort(keep))


def load_train_val(
    data: str | os.PathLike,
    *,
    spec: PreprocessSpec,
    train_split: str = "train",
    val_split: str = "val",
    val_data: str | os.PathLike | None = None,
    seed: int = 0,
    limit_per_class: int | None = None,
    label_fraction: float = 1.0,
    progress: bool = False,
) -> tuple[FaceDataset, FaceDataset]:
    """The training and validation faces of a supervised run: ``train_split`` of a split root
    (or the Kaggle CSV), else all of ``data``; validation from ``val_data``, else ``val_split``,
    else a seeded, class-stratified 10% held out of training. Then at most ``limit_per_class``
    training faces per class and a class-stratified ``label_fraction`` of them."""
    has_splits = holds_split(data, train_split)
    train = load_dataset(data, train_split if has_splits else None, spec=spec, progress=progress)
    if val_data:
        val = load_dataset(val_data, spec=spec)
    elif has_splits and holds_split(data, val_split):
        val = load_dataset(data, val_split, spec=spec)
    else:
        held = stratified_subset(train.labels, 0.1, seed=seed)
        unlabelled = np.flatnonzero(train.labels < 0)  # valence/arousal-only rows
        if len(unlabelled):
            pick = np.random.default_rng(seed).choice(
                unlabelled, max(1, len(unlabelled) // 10), replace=False
            )
            held = np.union1d(held, pick)
        rest = np.setdiff1d(np.arange(len(train)), held)
        train, val = train.subset(rest), train.subset(held)
    if (train.labels < 0).all() and train.valence is None:
        raise DatasetError(
            f"{data} has no labels; supervised training needs class folders, a CSV or a label list"
        )
    train = _limit_per_class(train, limit_per_class)
    if label_fraction < 1:
        train = train.subset(stratified_subset(train.labels, label_fraction, seed=seed))
    return train, val

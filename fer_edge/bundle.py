"""Model bundles: a folder with the graph or weights plus ``model.json``.

``model.json`` records the labels, the input spec and preprocessing, the source checkpoint,
metrics, and the sha256 of every file. Loading checks the schema, confines every file reference
to the bundle folder, and verifies the hashes, so a truncated or tampered bundle is refused with a
message that says what is wrong.

Integrity: ``model.json`` ``integrity.manifest`` is the sha256 of model.json's canonical form
(every field but ``integrity``, keys sorted, no whitespace, ASCII) - and so, through ``files``,
of every file's bytes. One hex string names the whole bundle: change a label, the preprocessing
or one byte of a file and it no longer matches. A runtime reads only files listed in ``files``
(OpenVINO's ``.bin`` beside the ``.xml`` must be listed; ONNX graphs are handed to ONNX Runtime
as bytes, so no external data file is opened). The manifest catches damage and edits by anyone
who does not recompute it; against someone who can rewrite the folder, compare it with the value
published with the model (``fer-edge verify --expect HASH``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from . import atomic
from .calibration import MAX_TEMPERATURE, MIN_TEMPERATURE
from .errors import BundleError, InputError
from .formats import AUTO_ORDER, FORMAT_SUFFIX, GRAPH_FORMATS, available_backends
from .preprocess import PreprocessSpec

SCHEMA = "fer-edge/bundle"
SCHEMA_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
MAX_META_BYTES = 1 << 20
# Nesting of model.json beyond this is refused before Python's recursion limit is reached.
MAX_META_DEPTH = 32


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle. ``graph`` is the absolute path of the main model file."""

    root: Path
    meta: dict
    labels: tuple[str, ...]
    preprocess: PreprocessSpec
    format: str
    precision: str
    graph: Path

    @property
    def name(self) -> str:
        name = self.meta.get("name")
        return name if isinstance(name, str) and name else self.root.name

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def temperature(self) -> float:
        """What the logits are divided by before the softmax (``fer-edge calibrate``; 1.0 when
        the bundle was never calibrated)."""
        return float(self.meta["model"].get("temperature", 1.0))

    def __repr__(self) -> str:
        # The dataclass repr would print all of model.json (files, hashes, metrics).
        p = self.preprocess
        return (
            f"Bundle({self.name!r}, format={self.format!r}, precision={self.precision!r}, "
            f"labels={list(self.labels)}, input={p.channels}x{p.size}x{p.size}, root='{self.root}')"
        )


def _confined(root: Path, rel: object) -> Path:
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"bundle file reference {rel!r} is not a file name")
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or rel.startswith(("/", "\\")):
        raise BundleError(f"bundle file reference {rel!r} escapes the bundle folder")
    full = root / p
    try:
        is_link = full.is_symlink()
        inside = full.resolve().is_relative_to(root.resolve())
    except (OSError, ValueError) as e:  # a NUL byte, a name too long for the file system
        raise BundleError(
            f"bundle file reference {rel[:100]!r} is not a usable file name: {e}"
        ) from None
    if is_link:
        raise BundleError(f"bundle file {rel!r} is a symbolic link; bundles hold plain files")
    if not inside:
        raise BundleError(f"bundle file reference {rel!r} escapes the bundle folder")
    return full


def _require(meta: dict, key: str, kind: type | tuple[type, ...]):
    if key not in meta:
        raise BundleError(f"model.json lacks the field {key!r}")
    if not isinstance(meta[key], kind):
        raise BundleError(
            f"model.json field {key!r} has the wrong type ({type(meta[key]).__name__})"
        )
    return meta[key]


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def parse_meta(text: str, where: object = "model.json") -> dict:
    """model.json text -> object; BundleError for anything that is not strict JSON: ``NaN`` and
    ``Infinity`` (Python's json accepts them), integers of more than 4300 digits, nesting deeper
    than :data:`MAX_META_DEPTH`."""
    depth = 0
    for ch in text:  # a cheap bound before the parser recurses (strings may hold brackets:
        if ch in "[{":  # this over-counts them, which only refuses sooner)
            depth += 1
            if depth > MAX_META_DEPTH:
                raise BundleError(f"{where} nests deeper than {MAX_META_DEPTH} levels")
        elif ch in "]}":
            depth -= 1
    try:
        meta = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, int digits limit, NaN
        raise BundleError(f"{where} is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{where} must hold a JSON object")
    return meta


def manifest_digest(meta: dict) -> str:
    """sha256 of ``meta``'s canonical form without ``integrity``: see the module docstring."""
    body = {k: v for k, v in meta.items() if k != "integrity"}
    try:
        text = json.dumps(
            body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except (TypeError, ValueError) as e:
        raise BundleError(f"model.json cannot be put in canonical form: {e}") from None
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def seal(meta: dict) -> dict:
    """``meta`` with its ``integrity.manifest`` (re)computed: what a writer of model.json calls
    last."""
    return {**meta, "integrity": {"algorithm": "sha256", "manifest": manifest_digest(meta)}}


def implicit_files(meta: dict) -> list[str]:
    """Files a runtime opens without being told: OpenVINO reads ``X.bin`` beside ``X.xml``."""
    model = meta["model"]
    if model.get("format") == "openvino" and model["file"].endswith(".xml"):
        return [model["file"][: -len(".xml")] + ".bin"]
    return []


def validate_meta(meta: object) -> None:
    """Raise BundleError unless ``meta`` is a well-formed model.json object."""
    if not isinstance(meta, dict):
        raise BundleError("model.json must hold a JSON object")
    if meta.get("schema") != SCHEMA:
        raise BundleError(f"model.json 'schema' must be {SCHEMA!r}, got {meta.get('schema')!r}")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(
            f"model.json schema_version {meta.get('schema_version')!r} is not supported "
            f"(this fer-edge reads {SCHEMA_VERSION})"
        )
    labels = _require(meta, "labels", list)
    if len(labels) < 2 or not all(isinstance(x, str) and x for x in labels):
        raise BundleError("model.json 'labels' must list at least two non-empty names")
    if len(set(labels)) != len(labels):
        raise BundleError("model.json 'labels' has duplicates")
    try:
        PreprocessSpec.from_dict(_require(meta, "preprocess", dict))
    except InputError as e:
        raise BundleError(f"model.json 'preprocess': {e}") from None
    model = _require(meta, "model", dict)
    for key in ("format", "file", "precision"):
        if key in model and not isinstance(model[key], str):
            raise BundleError(f"model.json model.{key} must be a string, got {model[key]!r}")
    fmt = model.get("format")
    if fmt not in FORMAT_SUFFIX:
        raise BundleError(f"model.json model.format {fmt!r} is not one of {sorted(FORMAT_SUFFIX)}")
    if model.get("precision", "fp32") not in PRECISIONS:
        raise BundleError(f"model.json model.precision must be one of {PRECISIONS}")
    t = model.get("temperature", 1.0)
    if (
        isinstance(t, bool)
        or not isinstance(t, int | float)
        or not MIN_TEMPERATURE <= t <= MAX_TEMPERATURE
    ):
        raise BundleError(
            f"model.json model.temperature must be a number in [{MIN_TEMPERATURE}, "
            f"{MAX_TEMPERATURE}], got {t!r}"
        )
    files = _require(meta, "files", dict)
    graph = model.get("file")
    if graph not in files:
        raise BundleError(f"model.json model.file {graph!r} is not listed in 'files'")
    for name, digest in files.items():
        if not (isinstance(digest, str) and len(digest) == 64):
            raise BundleError(f"model.json files[{name!r}] is not a sha256 hex digest")
    for name in implicit_files(meta):
        if name not in files:
            raise BundleError(
                f"model.json does not list {name!r}, which the {fmt} runtime reads with "
                f"{graph!r}: every file a runtime reads must be listed and hashed"
            )


def check_manifest(meta: dict, where: object = "model.json") -> str:
    """The bundle's manifest hash; BundleError when model.json has none or it does not match."""
    integrity = meta.get("integrity")
    recorded = integrity.get("manifest") if isinstance(integrity, dict) else None
    if not isinstance(recorded, str):
        raise BundleError(
            f"{where} has no integrity.manifest hash (written by an older fer-edge, or edited); "
            "if you trust it, add one with: fer-edge verify --reseal BUNDLE"
        )
    if manifest_digest(meta) != recorded:
        raise BundleError(
            f"{where} fails its manifest check: its labels, preprocessing, metadata or file "
            "hashes were changed after the bundle was written"
        )
    return recorded


def load_bundle(path: str | os.PathLike, verify: bool = True, legacy: bool = False) -> Bundle:
    """Load and verify a bundle folder (or its model.json). ``legacy``: accept a model.json
    without a manifest hash (written before there was one; its files are still checked), for
    :func:`reseal`."""
    root = Path(path)
    if root.name == "model.json":
        root = root.parent
    if not root.exists():
        raise BundleError(f"model bundle {str(root)!r} does not exist")
    if root.is_file() and root.suffix.lower() in GRAPH_FORMATS:
        raise BundleError(
            f"{str(root)!r} is a bare {root.suffix} graph, not a model bundle (a folder with "
            "model.json: labels, preprocessing, hashes); wrap it into one: fer-edge wrap "
            f"{root} --labels angry,disgust,fear,happy,neutral,sad,surprise --out {root.stem}_bundle"
        )
    meta_path = root / "model.json"
    if not meta_path.is_file():
        raise BundleError(f"{str(root)!r} is not a model bundle: it has no model.json")
    try:
        if meta_path.stat().st_size > MAX_META_BYTES:
            raise BundleError(f"{meta_path} is larger than {MAX_META_BYTES} bytes")
        text = meta_path.read_text("utf-8")
    except UnicodeDecodeError as e:
        raise BundleError(f"{meta_path} is not valid JSON: {e}") from None
    except PermissionError:
        raise BundleError(f"{meta_path} cannot be read: permission denied") from None
    meta = parse_meta(text, meta_path)
    validate_meta(meta)
    if verify and not (legacy and "integrity" not in meta):
        check_manifest(meta, meta_path)
    for rel, digest in meta["files"].items():
        full = _confined(root, rel)
        if not full.is_file():
            raise BundleError(f"bundle {root} is missing its file {rel!r}")
        try:
            actual = sha256_file(full) if verify else digest
        except OSError as e:  # permissions, an I/O error
            raise BundleError(f"bundle file {full} cannot be read: {e.strerror or e}") from None
        if actual != digest:
            raise BundleError(
                f"bundle file {rel!r} fails its sha256 check: it was changed or truncated "
                "after the bundle was written"
            )
    model = meta["model"]
    return Bundle(
        root=root,
        meta=meta,
        labels=tuple(meta["labels"]),
        preprocess=PreprocessSpec.from_dict(meta["preprocess"]),
        format=model["format"],
        precision=model.get("precision", "fp32"),
        graph=_confined(root, model["file"]),
    )


def save_bundle(
    out_dir: str | os.PathLike,
    files: dict[str, str | os.PathLike | bytes],
    *,
    labels: list[str] | tuple[str, ...],
    preprocess: PreprocessSpec,
    model: dict,
    name: str | None = None,
    source: dict | None = None,
    metrics: dict | None = None,
    extra: dict | None = None,
) -> Bundle:
    """Write a bundle atomically. ``files`` maps names inside the bundle to a path or bytes;
    ``model`` holds at least ``format`` and ``file`` (the main graph's name in ``files``)."""
    out_dir = Path(out_dir)
    meta = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "name": name or out_dir.name,
        "labels": list(labels),
        "preprocess": preprocess.to_dict(),
        "model": dict(model),
        "source": source or {},
        "metrics": metrics or {},
        **(extra or {}),
        "files": {},
    }
    with atomic.atomic_dir(out_dir) as tmp:
        for rel, content in files.items():
            dest = _confined(tmp, rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                dest.write_bytes(content)
            else:
                shutil.copyfile(content, dest)
            meta["files"][rel] = sha256_file(dest)
        validate_meta(meta)
        (tmp / "model.json").write_text(json.dumps(seal(meta), indent=2) + "\n", "utf-8")
    return load_bundle(out_dir)


def _rewrite_meta(path: str | os.PathLike, meta: dict) -> None:
    """Replace a bundle's model.json with ``meta``, its manifest hash recomputed."""
    validate_meta(meta)
    atomic.write_text(Path(path) / "model.json", json.dumps(seal(meta), indent=2) + "\n")


def record_metrics(path: str | os.PathLike, key: str, metrics: dict) -> None:
    """Store ``metrics`` under ``metrics[key]`` in a verified bundle's model.json, atomically,
    with its manifest hash recomputed."""
    b = load_bundle(path)
    _rewrite_meta(b.root, {**b.meta, "metrics": {**b.meta.get("metrics", {}), key: metrics}})


def record_temperature(path: str | os.PathLike, temperature: float, stats: dict) -> None:
    """Store a fitted softmax temperature as ``model.temperature`` (what the SDK applies) and
    the fit's numbers under ``metrics.calibration``, atomically."""
    b = load_bundle(path)
    meta = {
        **b.meta,
        "model": {**b.meta["model"], "temperature": float(temperature)},
        "metrics": {**b.meta.get("metrics", {}), "calibration": stats},
    }
    _rewrite_meta(b.root, meta)


def reseal(path: str | os.PathLike) -> Bundle:
    """Give a bundle written before manifests existed its manifest hash, after checking every
    file's sha256 (what such a bundle could promise). A bundle with a manifest must match it."""
    b = load_bundle(path, legacy=True)
    atomic.write_text(b.root / "model.json", json.dumps(seal(b.meta), indent=2) + "\n")
    return load_bundle(b.root)


# The shipped defaults: INT8 for TFLite and OpenVINO, FP32 ONNX for installs with neither.
DEFAULT_BY_BACKEND = {
    "tflite": "default_tflite",
    "openvino": "default_openvino",
    "onnxruntime": "default",
}


# OpenVINO's ARM CPU plugin has no int8 convolutions: it runs an INT8 IR's in f32 with the
# quantisation ops on top (more work than the FP32 graph, no int8 speed-up). So on aarch64
# OpenVINO's default is the FP32 bundle, read as ONNX (docs/results/arm64.json).
ARM_MACHINES = ("aarch64", "arm64")
DEFAULT_ON_ARM = {"openvino": "default"}


def default_bundle_name(backend: str, machine: str | None = None) -> str:
    """The shipped bundle ``backend`` runs best on ``machine`` (default: this one)."""
    machine = (machine or platform.machine()).lower()
    if machine in ARM_MACHINES and backend in DEFAULT_ON_ARM:
        return DEFAULT_ON_ARM[backend]
    return DEFAULT_BY_BACKEND.get(backend, "default")


def default_bundle_path(pytorch: bool = False, backend: str = "auto") -> Path:
    """The bundle shipped inside the package for ``backend`` (``auto``: the first installed
    backend, in the runtimes' preference order, that has one); ``pytorch=True`` gives the
    PyTorch teacher the defaults were distilled from (what training and compression start
    from)."""
    models = shipped_models()
    if pytorch:
        return models / "default_pytorch"
    if backend == "auto":
        installed = set(available_backends())
        candidates = [b for b in AUTO_ORDER if b in installed]
    else:
        candidates = [backend]
    for name in candidates:
        p = models / default_bundle_name(name)
        if (p / "model.json").is_file():
            return p
    return models / "default"


def wrap_graph(
    graph: str | os.PathLike,
    out: str | os.PathLike,
    labels: list[str] | tuple[str, ...],
    preprocess: PreprocessSpec,
    name: str | None = None,
    precision: str = "fp32",
) -> Bundle:
    """Wrap a user's own ``.onnx``, ``.tflite`` or OpenVINO ``.xml`` (+ ``.bin``) graph into a
    bundle with ``labels`` and ``preprocess``, so the SDK and every command can run it. The
    graph is copied and hashed; loading it checks the label count against its output."""
    graph = Path(graph)
    fmt = GRAPH_FORMATS.get(graph.suffix.lower())
    if fmt is None:
        raise BundleError(
            f"{graph.name}: wrap takes a .onnx, .tflite or OpenVINO .xml graph, not {graph.suffix!r}"
        )
    if not graph.is_file():
        raise BundleError(f"{graph} does not exist")
    labels = [str(x).strip() for x in labels if str(x).strip()]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise BundleError(f"--labels needs two or more distinct names, got {labels}")
    files = {f"model{graph.suffix.lower()}": graph}
    if fmt == "openvino":
        weights = graph.with_suffix(".bin")
        if not weights.is_file():
            raise BundleError(f"{graph.name} needs its weights {weights.name} beside it")
        files["model.bin"] = weights
    return save_bundle(
        out,
        files,
        labels=labels,
        preprocess=preprocess,
        model={"format": fmt, "file": f"model{graph.suffix.lower()}", "precision": precision},
        name=name or graph.stem,
        source={"wrapped": graph.name},
    )


# The shipped student as PyTorch weights: what `fer-edge export` converts by default, so the
# shipped INT8 bundles can be made again.
DEFAULT_STUDENT = "default_student_pytorch"


def shipped_models() -> Path:
    return Path(str(resources.files("fer_edge") / "models"))


def resolve(model: str | os.PathLike, pytorch: bool = False, backend: str = "auto") -> Path:
    """Map ``default`` (the shipped bundle ``backend`` runs best), the name of another shipped
    bundle (``default_tflite``, ``default_openvino``, ``default_pytorch``, ...; a folder of that
    name in the working directory wins) or a path to a bundle folder path (not yet loaded)."""
    if str(model) == "default":
        p = default_bundle_path(pytorch, backend)
        if not (p / "model.json").is_file():
            raise BundleError(f"this fer-edge installation ships no {p.name} model bundle")
        return p
    name = str(model)
    if name.startswith("default") and "/" not in name and not Path(name).exists():
        p = shipped_models() / name
        if not (p / "model.json").is_file():
            known = sorted(
                d.name for d in shipped_models().iterdir() if (d / "model.json").is_file()
            )
            raise BundleError(
                f"no shipped model bundle named {name!r}; shipped: {', '.join(known)}"
            )
        return p
    return Path(model)

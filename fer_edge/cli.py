"""The ``fer-edge`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args)``
(the training and compression ones in :mod:`fer_edge.commands`, each a call into its library
function); modules load only when their command runs, so on-device commands never import torch.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from .errors import FerEdgeError

# name -> (module, one-line help). Training and compression modules need the [train] extra.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "fer_edge.commands.train",
        "supervised training: cross-entropy, noisy labels (mim-spl), valence-arousal (avce)",
    ),
    "eval": ("fer_edge.evaluate", "accuracy, macro-F1, per-class metrics and confusion matrix"),
    "calibrate": (
        "fer_edge.calibrate",
        "fit a softmax temperature on validation faces so scores mean probabilities",
    ),
    "predict": ("fer_edge.predict", "emotions of the faces in images, folders or videos"),
    "verify": ("fer_edge.verify", "check a model bundle's schema and file hashes"),
    "wrap": ("fer_edge.wrap", "wrap your own .onnx/.tflite/OpenVINO graph into a model bundle"),
    "pretrain": (
        "fer_edge.commands.pretrain",
        "self-supervised pretraining (MoCo v2, SimCLR, BYOL, FRA, HNCL, Shu et al.)",
    ),
    "probe": (
        "fer_edge.commands.probe",
        "linear / k-NN / fine-tune evaluation of an encoder at 1/10/100% labels",
    ),
    "bench": ("fer_edge.bench", "per-stage latency, FPS and memory on 640x480 frames"),
    "robustness": (
        "fer_edge.commands.robustness",
        "accuracy under camera and detector shifts (margin, blur, JPEG, gamma, roll...)",
    ),
    "distill": ("fer_edge.commands.distill", "distil a trained teacher into a small student"),
    "prune": ("fer_edge.commands.prune", "structured channel pruning + fine-tuning (DepGraph)"),
    "qat": (
        "fer_edge.commands.qat",
        "INT8 quantisation-aware fine-tuning, with PTQ for comparison",
    ),
    "export": (
        "fer_edge.commands.export",
        "export to ONNX, TFLite or OpenVINO with a parity check",
    ),
    "pipeline": (
        "fer_edge.commands.pipeline",
        "the whole recipe: pretrain, teacher, distil, prune, QAT, export, report",
    ),
}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows an option's default only when it has one worth reading (not None, False or an
    empty value), so help has no ``(default: None)`` noise."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, "", [], ()) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


# reST roles and literals of docstrings, as plain text: :class:`~a.b.C` -> C, ``x`` -> x
_ROLE = re.compile(r":[a-z]+:`~?(?:[\w.]+\.)?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def plain_text(doc: str) -> str:
    """A module docstring as help text: reST markup removed."""
    return _LITERAL.sub(r"\1", _ROLE.sub(r"\1", doc))


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog="fer-edge",
        description="Facial expression recognition: train, compress, export, run on the edge.",
        epilog=f"commands:\n{lines}\n\nRun 'fer-edge COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND")
    p.add_argument("--version", action="version", version=_version())
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"fer-edge {version('fer-edge')}"
    except PackageNotFoundError:
        return "fer-edge (not installed)"


# The extra that brings each optional package (the SDK itself needs none of them); scipy,
# scikit-learn and matplotlib are in both extras, and [eval] is the smaller one.
EXTRA_OF_PACKAGE = {
    **dict.fromkeys(
        ("torch", "torchvision", "torch_pruning", "litert_torch", "onnx", "tqdm", "yaml", "nncf"),
        "train",
    ),
    **dict.fromkeys(("scipy", "sklearn", "matplotlib"), "eval"),
    "openvino": "openvino",
    "ai_edge_litert": "tflite",
}


def _missing_package(command: str, e: ModuleNotFoundError) -> int:
    """One line naming the missing package and the extra that installs it; exit status 2."""
    package = (e.name or "").split(".")[0]  # what pip installs, not the submodule asked for
    extra = EXTRA_OF_PACKAGE.get(package)
    hint = f": pip install 'fer-edge[{extra}]'" if extra else ""
    print(f"fer-edge {command}: error: needs the Python package {package!r}{hint}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        _top_parser().parse_args(argv or ["--help"])
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        _top_parser().parse_args([name])  # prints the usage error and exits 2
    module_name, text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        return _missing_package(name, e)
    parser = argparse.ArgumentParser(
        prog=f"fer-edge {name}",
        description=plain_text(module.__doc__ or text).strip(),
        formatter_class=_Formatter,
    )
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except FerEdgeError as e:
        print(f"fer-edge {name}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system said no: a missing or unwritable folder, a full disk
        where = f": {e.filename}" if e.filename else ""
        print(f"fer-edge {name}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # a lazy import of an extra's package, e.g. scipy's fit
        return _missing_package(name, e)
    except KeyboardInterrupt:
        print(f"fer-edge {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

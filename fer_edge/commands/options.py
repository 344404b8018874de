"""Options several commands share, and parsed options turned into library keyword arguments."""

from __future__ import annotations

import argparse

from fer_edge.errors import InputError

DEVICE_HELP = "auto, cpu, cuda, cuda:N"


def add_run_arguments(
    p: argparse.ArgumentParser,
    *,
    resume: bool = True,
    amp_help: str
    | None = "train in fp32 (default: bf16 autocast on a GPU and on CPUs with native bf16)",
    seed_help: str | None = None,
    device_help: str = DEVICE_HELP,
    progress_help: str = "no progress bar",
) -> None:
    """``--seed --resume --device --threads --no-amp --no-progress``: how a run runs, not what it
    trains (``resume=False``/``amp_help=None`` leave those two out)."""
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    if resume:
        p.add_argument(
            "--resume",
            action="store_true",
            help="continue the run in --out from its last checkpoint",
        )
    p.add_argument("--device", default="auto", help=device_help)
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    if amp_help is not None:
        p.add_argument("--no-amp", action="store_true", help=amp_help)
    p.add_argument("--no-progress", action="store_true", help=progress_help)


def add_benchmark_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--benchmark",
        action="store_true",
        help="time training steps, print one JSON line with images_per_s and exit (writes nothing)",
    )
    p.add_argument("--benchmark-steps", type=int, default=20, help="timed steps of --benchmark")


def add_settings_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a {what} setting (repeatable)",
    )


def parse_settings(items: list[str]) -> dict[str, str]:
    """``--set`` items ``KEY=VALUE`` -> {KEY: VALUE} (the method converts the values)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set wants KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def keyword_arguments(args: argparse.Namespace) -> dict:
    """The parsed options as the library function's keyword arguments, which carry the options'
    names except: ``--no-amp`` -> ``amp=False``, ``--no-progress`` -> ``progress=False``,
    ``--set KEY=VALUE`` -> ``settings={KEY: VALUE}``."""
    kwargs = dict(vars(args))
    for flag in ("amp", "progress"):
        if f"no_{flag}" in kwargs:
            kwargs[flag] = not kwargs.pop(f"no_{flag}")
    if "set" in kwargs:
        kwargs["settings"] = parse_settings(kwargs.pop("set"))
    return kwargs


def add_finetune_arguments(p: argparse.ArgumentParser, *, epochs: int, lr: float, out: str) -> None:
    """Options every compression command shares (``fer_edge.compress.finetune.Finetune``'s)."""
    from fer_edge.train.augment import AUGMENTS

    p.add_argument(
        "--data",
        required=True,
        help="split root with train/ and val/ (or any layout fer-edge train reads)",
    )
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--val-data", help="separate validation dataset")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--lr", type=float, default=lr, help="peak learning rate (AdamW, warm-up then cosine)"
    )
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument(
        "--augment",
        default="standard",
        choices=list(AUGMENTS),
        help="training augmentation (see fer-edge train --help)",
    )
    p.add_argument(
        "--limit-per-class",
        type=int,
        help="at most this many training faces per class (quick runs)",
    )
    p.add_argument(
        "--out", default=out, help="run folder: last.pt, metrics.jsonl, curves.png, bundle/"
    )
    add_run_arguments(
        p,
        amp_help="train in fp32 (default: bf16 autocast on a GPU and on CPUs with native bf16; "
        "QAT always trains in fp32)",
    )

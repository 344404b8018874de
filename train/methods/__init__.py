"""Self-supervised pretraining methods, one file each.

A method module defines ``HELP`` (one line), ``DEFAULTS`` (its hyperparameters, overridable with
``fer-edge pretrain --set KEY=VALUE``, ``settings=`` in Python), ``OPTIM`` (default optimizer, learning rate per 256
images, weight decay), ``SYNC_BN`` (whether multi-GPU runs convert BatchNorm to SyncBatchNorm)
and ``Model(arch, in_channels, cfg)``: an ``nn.Module`` with ``backbone`` (the online backbone,
key-compatible with ``FaceNet.backbone``), ``forward(view1, view2) -> {"loss": ..., parts}`` and
``momentum_update(progress)`` called after every optimizer step with the fraction of training
done. ``VARIANTS`` may name further methods that are the module with other defaults.

A method whose views are more than two augmentations of one face also defines
``prepare(faces, cfg, spec) -> Views``, run once on the dataset before training: it may give view
2 another source (a face swap of each face, a nearby frame of a clip), extra images per sample
(hard negatives), and per-sample tensors (landmark heatmaps, descriptors) whose batch rows reach
``forward`` as keyword arguments.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np
import torch

from fer_edge.errors import InputError


@dataclass
class Views:
    """Where a method's views come from (see the module docstring); the default is two
    augmentations of the same face and nothing else."""

    # uint8 (N, H, W, C) aligned with the dataset: view 2 of face i is augmented from images2[i]
    images2: np.ndarray | None = None
    # uint8 (N, H, W, C + extra) replacing the dataset's faces as the source of both views (and
    # of images2's default): channels past the preprocessing's (a landmark heatmap) get the same
    # geometric augmentation as the face, no photometric one; the encoder takes C + extra channels
    images: np.ndarray | None = None
    # batch indices, generator -> rows of images2 (default: the dataset) that view 2 is drawn
    # from (temporal positives; a face or its face swap)
    partner: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    # batch indices, generator -> dataset indices of extra faces, augmented and passed to
    # forward as ``extra`` (hard negatives)
    extra: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    # name -> (N, ...) tensor; forward(x1, x2, name=tensor[batch]) for each
    per_sample: dict[str, torch.Tensor] = field(default_factory=dict)


MODULES = ("moco", "simclr", "byol", "fra", "hncl", "shu")


def _variants() -> dict[str, tuple[ModuleType, dict]]:
    out = {}
    for name in MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        out[name] = (module, {})
        for variant, overrides in getattr(module, "VARIANTS", {}).items():
            out[variant] = (module, overrides)
    return out


METHODS: dict[str, tuple[ModuleType, dict]] = _variants()


def get(name: str) -> ModuleType:
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name][0]


def config(name: str, overrides: dict | None = None) -> dict:
    """The method's hyperparameters: defaults, then the variant's, then ``overrides`` (values or
    strings from the command line, converted to the default's type)."""
    return settings(name, get(name).DEFAULTS, METHODS[name][1], overrides)


def settings(name: str, defaults: dict, variant: dict, overrides: dict | None = None) -> dict:
    """``defaults``, then ``variant``, then ``overrides`` (converted to the default's type: the
    command line's ``--set`` gives strings, Python and recipes give values); unknown keys and
    unconvertible values are refused naming the method."""
    cfg = {**defaults, **variant}
    for key, value in (overrides or {}).items():
        if key not in cfg:
            raise InputError(f"{name} has no setting {key!r}; it has {', '.join(sorted(cfg))}")
        kind = type(defaults[key])
        raw = value if isinstance(value, str) else str(value)  # 0.5 is refused for an int
        try:
            cfg[key] = _parse_bool(raw) if kind is bool else kind(raw)
        except ValueError:
            raise InputError(f"{name} setting {key} wants a {kind.__name__}, got {raw!r}") from None
    return cfg


def _parse_bool(raw: str) -> bool:
    words = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
    if raw.strip().lower() not in words:
        raise ValueError(raw)
    return words[raw.strip().lower()]


def build(name: str, arch: str, in_channels: int, cfg: dict):
    return get(name).Model(arch, in_channels, cfg)


def describe() -> str:
    """One line per method with its settings, for ``--help``."""
    lines = []
    for name, (module, variant) in METHODS.items():
        cfg = {**module.DEFAULTS, **variant}
        listed = " ".join(f"{k}={v}" for k, v in cfg.items())
        title = (
            module.HELP
            if not variant
            else f"{module.HELP} ({', '.join(f'{k}={v}' for k, v in variant.items())})"
        )
        lines.append(f"  {name:<13} {title}\n{'':16}settings: {listed}")
    return "\n".join(lines)

"""Self-supervised pretraining methods, one file each.

A method module defines ``HELP`` (one line), ``DEFAULTS`` (its hyperparameters, overridable with
``fer-edge pretrain --set KEY=VALUE``), ``OPTIM`` (default optimizer, learning rate per 256
images, weight decay), ``SYNC_BN`` (whether multi-GPU runs convert BatchNorm to SyncBatchNorm)
and ``Model(arch, in_channels, cfg)``: an ``nn.Module`` with ``backbone`` (the online backbone,
key-compatible with ``FaceNet.backbone``), ``forward(view1, view2) -> {"loss": ..., parts}`` and
``momentum_update(progress)`` called after every optimizer step with the fraction of training
done. ``VARIANTS`` may name further methods that are the module with other defaults.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from fer_edge.errors import InputError

MODULES = ("moco", "simclr", "byol", "fra")


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


def config(name: str, overrides: dict[str, str] | None = None) -> dict:
    """The method's hyperparameters: defaults, then the variant's, then ``overrides`` (strings
    from the command line, converted to the default's type)."""
    module, variant = get(name), METHODS[name][1]
    cfg = {**module.DEFAULTS, **variant}
    for key, raw in (overrides or {}).items():
        if key not in cfg:
            raise InputError(f"{name} has no setting {key!r}; it has {', '.join(sorted(cfg))}")
        kind = type(module.DEFAULTS[key])
        try:
            cfg[key] = kind(raw)
        except ValueError:
            raise InputError(f"{name} setting {key} wants a {kind.__name__}, got {raw!r}") from None
    return cfg


def build(name: str, arch: str, in_channels: int, cfg: dict):
    return get(name).Model(arch, in_channels, cfg)


def describe() -> str:
    """One line per method with its settings, for ``--help``."""
    lines = []
    for name, (module, variant) in METHODS.items():
        cfg = {**module.DEFAULTS, **variant}
        settings = " ".join(f"{k}={v}" for k, v in cfg.items())
        title = (
            module.HELP
            if not variant
            else f"{module.HELP} ({', '.join(f'{k}={v}' for k, v in variant.items())})"
        )
        lines.append(f"  {name:<8} {title}\n           settings: {settings}")
    return "\n".join(lines)

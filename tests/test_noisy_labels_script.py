"""scripts/noisy_labels.py: a grid method may carry its own mim-spl settings (the ablations), each
in its own run folder; malformed entries are refused before any training."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("noisy_labels", REPO / "scripts" / "noisy_labels.py")
noisy_labels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(noisy_labels)


def test_methods_with_settings_get_their_own_runs_and_bad_entries_are_refused():
    assert noisy_labels.parse_method("ce") == ("ce", [], "ce")
    assert noisy_labels.parse_method("mim-spl:relabel=drop") == (
        "mim-spl",
        ["relabel=drop"],
        "mim-spl_relabel-drop",
    )
    method, settings, name = noisy_labels.parse_method("mim-spl:mim_weight=0,dcl_weight=0")
    assert settings == ["mim_weight=0", "dcl_weight=0"]
    assert name == "mim-spl_mim_weight-0_dcl_weight-0" != noisy_labels.parse_method("mim-spl")[2]
    for bad in ("mim-spl:relabel", "ce:warmup=2"):
        with pytest.raises(SystemExit, match="error"):
            noisy_labels.parse_method(bad)

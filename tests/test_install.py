"""Installs that do not drift: constraints.txt pins every dependency pyproject.toml names, and
the environment the suite runs in holds exactly the locked versions (scripts/env.sh installs
through the lock; scripts/check_newest.sh is the one run that resolves past it, on purpose)."""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _lock() -> dict[str, str]:
    rows = [
        line.split("==")
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert all(len(r) == 2 for r in rows), "constraints.txt: every line must be name==version"
    return {name.lower().replace("_", "-"): version for name, version in rows}


def test_every_dependency_pyproject_names_is_locked():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted |= {_name(r) for r in extra}
    missing = wanted - set(_lock())
    assert not missing, f"not pinned in constraints.txt: {sorted(missing)}"


def test_the_environment_holds_the_locked_versions():
    if os.environ.get("FER_EDGE_CONSTRAINTS", None) == "":
        pytest.skip(
            "scripts/check_newest.sh: the newest allowed versions, past the lock on purpose"
        )
    lock = _lock()
    installed = {
        (d.metadata["Name"] or "").lower().replace("_", "-"): d.version
        for d in metadata.distributions()
    }
    drift = {n: (v, installed[n]) for n, v in lock.items() if n in installed and installed[n] != v}
    assert not drift, f"installed versions differ from constraints.txt (lock, installed): {drift}"
    assert {"numpy", "onnxruntime", "opencv-python-headless"} <= installed.keys() & lock.keys()

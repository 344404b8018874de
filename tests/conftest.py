"""Shared fixtures. Real data comes from ../shared/data (or $FER_EDGE_DATA). Tests that need it
skip with the reason when it is absent, unless FER_EDGE_REQUIRE_DATA=1 (set by .ci/run), which
turns that skip into a failure so CI always runs them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FER_EDGE_DATA", REPO.parent / "shared" / "data"))


def _need(path: Path, what: str) -> Path:
    if path.exists():
        return path
    msg = (
        f"{what} not found at {path} (set FER_EDGE_DATA to the folder holding fer2013/ and media/)"
    )
    if os.environ.get("FER_EDGE_REQUIRE_DATA") == "1":
        pytest.fail(msg + "; FER_EDGE_REQUIRE_DATA=1 makes this a failure", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def fer2013_root() -> Path:
    """Split root of the real FER-2013 JPEGs: fer2013/{train,val,test}/<class>/*.jpg."""
    return _need(DATA / "fer2013", "FER-2013 data")


@pytest.fixture(scope="session")
def media_root() -> Path:
    """Real photos and videos with faces (see ../shared/data/media/README.md)."""
    return _need(DATA / "media", "sample media")


@pytest.fixture(scope="session")
def small_fer_dir(fer2013_root: Path, tmp_path_factory) -> Path:
    """A small class-folder copy of real FER-2013 faces: per class up to 40 train, 15 val, 15 test."""
    out = tmp_path_factory.mktemp("fer_small")
    for split, n in (("train", 40), ("val", 15), ("test", 15)):
        for cls_dir in sorted((fer2013_root / split).iterdir()):
            dest = out / split / cls_dir.name
            dest.mkdir(parents=True)
            for f in sorted(cls_dir.iterdir())[:n]:
                (dest / f.name).write_bytes(f.read_bytes())
    return out


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep the decoded-array cache out of the user's home during tests."""
    monkeypatch.setenv("FER_EDGE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)

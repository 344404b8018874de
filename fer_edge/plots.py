"""Plot files for reports and training runs: headless matplotlib, written atomically."""

from __future__ import annotations

import os
from pathlib import Path

from . import atomic


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed); imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | os.PathLike, fmt: str = "png", dpi: int = 110) -> None:
    """Write ``fig`` to ``path`` as ``fmt`` and close it."""
    with atomic.atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    pyplot().close(fig)

"""scripts/plot_runs.py: one panel per metric, one line per run folder; bad arguments refused."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("plot_runs", REPO / "scripts" / "plot_runs.py")
plot_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_runs)


def _run(folder: Path, losses: list[float]) -> Path:
    folder.mkdir(parents=True)
    lines = [json.dumps({"epoch": i + 1, "loss": v}) for i, v in enumerate(losses)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_plots_runs_and_refuses_what_it_cannot_draw(tmp_path, capsys):
    a, b = _run(tmp_path / "a", [3.0, 2.0, 1.5]), _run(tmp_path / "b", [3.0, 2.5])
    out = tmp_path / "fig.png"
    panel = ["loss", "loss", f"a={a}", f"b={b}:loss"]
    assert plot_runs.main(["--out", str(out), "--panel", *panel, "--panel", *panel]) == 0
    img = cv2.imread(str(out))
    assert img is not None and img.shape[1] > img.shape[0] > 200  # two panels side by side
    assert plot_runs.main(["--out", str(tmp_path / "x.png"), "--panel", "t", "acc", f"a={a}"]) == 2
    assert "logs no 'acc'" in capsys.readouterr().err
    assert (
        plot_runs.main(["--out", str(tmp_path / "x.png"), "--panel", "t", "loss", f"a={a}:f1"]) == 2
    )
    assert "logs no 'f1'" in capsys.readouterr().err
    assert plot_runs.main(["--out", str(tmp_path / "x.png"), "--panel", "t", "loss", "a"]) == 2
    assert "LABEL=RUN_DIR" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()

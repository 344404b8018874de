"""scripts/plot_label_efficiency.py: rows of several probe folders merge per label; bad input refused."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location(
    "plot_label_efficiency", REPO / "scripts" / "plot_label_efficiency.py"
)
plot_label_efficiency = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_label_efficiency)


def _probe(folder: Path, rows: list[tuple[str, float, float]]) -> Path:
    folder.mkdir(parents=True)
    results = [{"protocol": p, "fraction": f, "test_accuracy": a} for p, f, a in rows]
    (folder / "results.json").write_text(json.dumps({"rows": results}))
    return folder


def test_merges_probe_folders_and_refuses_what_it_cannot_read(tmp_path, capsys):
    a = _probe(tmp_path / "a", [("finetune", 0.01, 0.3), ("linear", 0.01, 0.2)])
    a100 = _probe(tmp_path / "a100", [("finetune", 1.0, 0.6)])
    b = _probe(tmp_path / "b", [("finetune", 0.01, 0.25), ("finetune", 1.0, 0.55)])
    lines = plot_label_efficiency.read_rows([f"A={a}", f"A={a100}", f"B={b}"])
    assert lines[("A", "finetune")] == {0.01: 0.3, 1.0: 0.6}
    assert lines[("A", "linear")] == {0.01: 0.2}
    assert set(lines) == {("A", "finetune"), ("A", "linear"), ("B", "finetune")}

    out, table = tmp_path / "fig.png", tmp_path / "table.json"
    argv = ["--out", str(out), "--json", str(table), f"A={a}", f"A={a100}", f"B={b}"]
    assert plot_label_efficiency.main(argv) == 0
    img = cv2.imread(str(out))
    assert img is not None and img.shape[1] > img.shape[0] > 200
    rows = json.loads(table.read_text())["rows"]
    assert len(rows) == 5
    assert {(r["method"], r["protocol"], r["fraction"], r["test_accuracy"]) for r in rows} == {
        ("A", "finetune", 0.01, 0.3), ("A", "linear", 0.01, 0.2), ("A", "finetune", 1.0, 0.6),
        ("B", "finetune", 0.01, 0.25), ("B", "finetune", 1.0, 0.55),
    }  # fmt: skip
    assert all(set(r) >= {"val_accuracy", "epochs", "command"} for r in rows)

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json")
    empty = _probe(tmp_path / "empty", [])
    for bad, message in [
        (f"A={tmp_path / 'missing'}", "not a fer-edge probe result"),
        (f"A={tmp_path / 'broken'}", "not a fer-edge probe result"),
        (f"A={empty}", "has no result rows"),
        (str(a), "LABEL=PROBE_DIR"),
    ]:
        assert plot_label_efficiency.main(["--out", str(tmp_path / "x.png"), bad]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()

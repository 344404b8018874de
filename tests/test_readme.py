"""The README's Python API example runs as written, on a small copy of real FER-2013 faces."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- tests/test_readme.py runs this block as written -->"


def marked_python_blocks() -> list[str]:
    """The python code blocks the README marks as run by this test."""
    return re.findall(re.escape(MARK) + r"\n```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_python_api_example_trains_distils_and_exports(
    small_fer_dir, tmp_path, monkeypatch, capsys
):
    (block,) = marked_python_blocks()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fer2013").symlink_to(small_fer_dir)  # the example's split root
    exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    assert (tmp_path / "runs" / "teacher" / "best" / "model.json").is_file()
    assert (tmp_path / "runs" / "student_onnx" / "model.onnx").is_file()
    assert float(capsys.readouterr().out.strip().splitlines()[-1]) >= 0.99

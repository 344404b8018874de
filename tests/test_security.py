"""Security: no network from the SDK, no code execution from user-supplied model files, and
`fer-edge verify` catching tampering."""

import os
import socket
import sys
from pathlib import Path

import cv2
import pytest
import torch

from fer_edge import Recognizer
from fer_edge.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from sdk_helpers import onnx_classifier  # noqa: E402

from fer_edge.bundle import save_bundle  # noqa: E402
from fer_edge.labels import FER_LABELS  # noqa: E402
from fer_edge.preprocess import PreprocessSpec  # noqa: E402


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"network connection attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.fixture
def onnx_bundle(tmp_path):
    graph = onnx_classifier(tmp_path / "g.onnx")
    return save_bundle(
        tmp_path / "bundle",
        {"model.onnx": graph},
        labels=FER_LABELS,
        preprocess=PreprocessSpec(),
        model={"format": "onnx", "file": "model.onnx"},
    ).root


def test_sdk_opens_no_connection(no_network, media_root, capsys, tmp_path):
    rec = Recognizer("default", backend="onnxruntime")
    faces = rec(cv2.imread(str(media_root / "portrait.jpg")))
    assert len(faces) == 1
    out = tmp_path / "annotated.png"
    assert (
        main(["predict", str(media_root / "portrait.jpg"), "--json", "--annotate", str(out)]) == 0
    )
    assert '"label"' in capsys.readouterr().out and out.stat().st_size > 0
    assert no_network == []


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


@pytest.mark.parametrize("where", ["eval", "init", "resume"])
def test_pickle_payloads_never_run(where, small_fer_dir, tmp_path, monkeypatch, capsys):
    """A checkpoint carrying a pickle payload is refused by every command that reads one, and
    the payload never runs."""
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload(), "arch": "vgg_small"}, evil)
    common = ["--data", str(small_fer_dir), "--epochs", "1", "--arch", "vgg_small", "--no-progress"]
    if where == "eval":
        argv = ["eval", "--model", str(evil), "--data", str(small_fer_dir), "--split", "test"]
    elif where == "init":
        argv = ["train", *common, "--init", str(evil), "--out", str(tmp_path / "run")]
    else:
        run = tmp_path / "run"
        run.mkdir()
        (run / "last.pt").write_bytes(evil.read_bytes())
        argv = ["train", *common, "--resume", "--out", str(run)]
    assert main(argv) == 2
    assert "cannot be loaded safely" in capsys.readouterr().err
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_verify_accepts_sound_and_rejects_tampered_bundles(onnx_bundle, capsys):
    assert main(["verify", str(onnx_bundle)]) == 0
    assert "ok:" in capsys.readouterr().out
    graph = onnx_bundle / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    assert main(["verify", str(onnx_bundle)]) == 2
    assert "sha256" in capsys.readouterr().err


def test_default_bundles_verify(capsys):
    from fer_edge.bundle import DEFAULT_BY_BACKEND, default_bundle_path, load_bundle

    assert main(["verify", "default"]) == 0
    root = default_bundle_path(pytorch=True).parent
    for name in {*DEFAULT_BY_BACKEND.values(), "default_pytorch"}:
        if (root / name).exists():
            assert main(["verify", str(root / name)]) == 0, name
    assert load_bundle(default_bundle_path(pytorch=True)).format == "pytorch"


def test_no_unsafe_deserialisation_in_the_code_base():
    """Every torch.load uses weights_only=True, every np.load allow_pickle=False, and nothing
    calls pickle.load or yaml.load."""
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in [
        *root.glob("fer_edge/**/*.py"),
        *root.glob("train/**/*.py"),
        *root.glob("compress/**/*.py"),
        *root.glob("runtimes/**/*.py"),
    ]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            bad = (
                ("torch.load(" in code and "weights_only=True" not in code)
                or ("np.load(" in code and "allow_pickle=False" not in code)
                or "pickle.load" in code
                or "yaml.load(" in code
            )
            if bad:
                offenders.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert offenders == []

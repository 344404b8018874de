"""Security: no network from the SDK, no code execution from user-supplied model files, and
`fer-edge verify` catching tampering."""

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch

from fer_edge import Recognizer
from fer_edge.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from sdk_helpers import onnx_classifier, wrap_onnx  # noqa: E402


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
    return wrap_onnx(tmp_path / "bundle", onnx_classifier(tmp_path / "g.onnx"))


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


# ------------------------------------------------------------------- what the kernel sees

# connect/sendto/sendmsg/sendmmsg to an IPv4 or IPv6 address, as strace prints them
_INET = re.compile(
    r'sa_family=AF_INET6?, .*?(?:sin_addr=inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)")'
)
_SDK_RUN = """
import sys, cv2
from fer_edge import Recognizer
rec = Recognizer("default", backend=sys.argv[1], num_threads=1)
print(len(rec(cv2.imread(sys.argv[2]))))
"""


def _traced(cmd: list[str], home: Path, cwd: Path) -> tuple[list[str], str]:
    """Run ``cmd`` in a child process under strace (every thread and child process), in a network
    namespace with only loopback when the kernel allows one, with ``home`` as $HOME. Returns the
    non-loopback addresses it tried to reach and its output."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    log = cwd / "net.strace"
    trace = ["strace", "-f", "-qq", "-e", "trace=connect,sendto,sendmsg,sendmmsg", "-o", str(log)]
    # unshare -n: a namespace with no route out, so a failing test cannot send anything either
    netns = ["unshare", "-n"] if subprocess.run(["unshare", "-n", "true"]).returncode == 0 else []
    env = {**os.environ, "HOME": str(home), "FER_EDGE_CACHE": str(cwd / "cache")}
    env.pop("CI", None)  # OpenVINO's telemetry stays quiet in CI; the test must not rely on it
    proc = subprocess.run(
        [*netns, *trace, *cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    remote = []
    for line in log.read_text().splitlines():
        for m in _INET.finditer(line):
            addr = m.group(1) or m.group(2)
            if not (addr.startswith("127.") or addr in ("::1", "0.0.0.0", "::")):
                remote.append(f"{addr}: {line[:200]}")
    return remote, proc.stdout


@pytest.mark.parametrize("backend", ["onnxruntime", "tflite", "openvino"])
def test_each_backend_reaches_no_network_and_writes_nothing_in_home(backend, media_root, tmp_path):
    """strace sees every connect and send of the process and its children (OpenVINO's telemetry
    forks one); nothing may go to a non-loopback address, and nothing may appear in $HOME but
    the XDG cache folder (OpenVINO's telemetry writes ~/intel; ONNX Runtime keeps a device id in
    ~/.cache/Microsoft)."""
    home = tmp_path / "home"
    home.mkdir()
    cmd = [sys.executable, "-c", _SDK_RUN, backend, str(media_root / "portrait.jpg")]
    remote, out = _traced(cmd, home, tmp_path)
    assert out.strip() == "1"  # the run did its work: one face
    assert remote == []
    assert sorted(p.name for p in home.iterdir()) in ([], [".cache"])


def test_training_and_export_reach_no_network(small_fer_dir, tmp_path):
    from train_helpers import SMALL_RUN

    home = tmp_path / "home"
    home.mkdir()
    run = tmp_path / "run"
    train = [sys.executable, "-m", "fer_edge", "train", "--data", str(small_fer_dir)]
    remote, _ = _traced([*train, "--epochs", "1", "--out", str(run), *SMALL_RUN], home, tmp_path)
    assert remote == [] and (run / "best" / "model.json").is_file()
    export = [sys.executable, "-m", "fer_edge", "export", "--target", "openvino", "--out", "ov"]
    export += ["--model", str(run / "best"), "--data", str(small_fer_dir), "--parity-faces", "32"]
    remote, _ = _traced(export, home, tmp_path)
    assert remote == [] and (tmp_path / "ov" / "model.json").is_file()
    # the XDG folders only (matplotlib keeps its font cache under ~/.config), no ~/intel
    assert {p.name for p in home.iterdir()} <= {".cache", ".config"}


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

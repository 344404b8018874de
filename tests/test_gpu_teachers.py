"""scripts/gpu_teachers.sh, rehearsed on the CPU with real faces: pack -> train (as on the bare
device machine: fer-edge from the checkout, the data and imagesize from the pack) -> unpack gives
teachers whose bundles verify, and each misuse stops with a named error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fer_edge.bundle import load_bundle, sha256_file

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_teachers.sh"


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300
    )


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # the script's python3 must be this interpreter, the one that has torch
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(PACK_DIR=str(tmp_path / "pack"), WORK=str(tmp_path / "work"), **extra)
    return env


def test_packed_faces_train_teachers_that_come_back_in_parts_and_verify(small_fer_dir, tmp_path):
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    (shared / "fer2013").symlink_to(small_fer_dir)
    out = tmp_path / "out"
    out.mkdir()
    env = _env(
        tmp_path,
        FER_EDGE_SHARED=str(tmp_path / "shared"),
        OUT=str(out),
        DEVICE="cpu",
        ARCH="vgg_small",
        EPOCHS="1",
        TRAIN_FLAGS="--batch-size 32 --threads 1",
        PART_BYTES="500000",  # a vgg_small bundle is 1.2 MB: 3 parts each to join again
    )
    packed = _run("pack", env=env)
    assert packed.returncode == 0, packed.stderr
    assert (tmp_path / "pack" / "fer2013.tar.xz").stat().st_size > 0
    assert (tmp_path / "pack" / "site" / "imagesize" / "__init__.py").is_file()

    trained = _run("train", env=env)
    assert trained.returncode == 0, trained.stderr[-2000:]
    log = (out / "log.txt").read_text()
    assert "training 2 x vgg_small for 1 epochs on 280 faces" in log
    for seed in (1, 2):
        parts = sorted(out.glob(f"teacher_s{seed}.tar.part*"))
        assert len(parts) == 3 and all(p.stat().st_size <= 500000 for p in parts)

    unpacked = _run("unpack", str(out), str(tmp_path / "teachers"), env=env)
    assert unpacked.returncode == 0, unpacked.stderr
    bundles = [Path(line) for line in unpacked.stdout.split()]
    assert [b.parent.name for b in bundles] == ["teacher_s1", "teacher_s2"]
    for b in bundles:
        bundle = load_bundle(b)  # verifies every file's hash: the parts were joined in order
        assert bundle.meta["model"]["arch"] == "vgg_small"
        assert bundle.meta["source"]["config"]["epochs"] == 1
    weights = [sha256_file(b / "model.pt") for b in bundles]
    assert weights[0] != weights[1]  # two seeds, two teachers


def test_train_without_a_pack_or_out_and_unpack_of_nothing_stop_with_named_errors(tmp_path):
    env = _env(tmp_path, OUT=str(tmp_path))
    no_pack = _run("train", env=env)
    assert no_pack.returncode == 2
    assert "fer2013.tar.xz is missing" in no_pack.stderr and "Traceback" not in no_pack.stderr

    (tmp_path / "pack").mkdir()
    (tmp_path / "pack" / "fer2013.tar.xz").write_bytes(b"")
    env.pop("OUT")
    assert "OUT is not set" in _run("train", env=env).stderr

    nothing = _run("unpack", str(tmp_path / "pack"), str(tmp_path / "dest"), env=env)
    assert nothing.returncode == 2 and "no teacher_s*.tar.part00" in nothing.stderr
    assert _run("frobnicate", env=env).returncode == 2


def test_train_refuses_to_leave_more_files_than_the_device_tool_returns(small_fer_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        ["tar", "cJf", str(tmp_path / "pack.tar.xz"), "-C", str(small_fer_dir), "train", "val"],
        check=True,
    )
    (tmp_path / "pack").mkdir()
    (tmp_path / "pack.tar.xz").rename(tmp_path / "pack" / "fer2013.tar.xz")
    env = _env(
        tmp_path,
        OUT=str(out),
        DEVICE="cpu",
        ARCH="vgg_small",
        EPOCHS="1",
        SEEDS="1",
        TRAIN_FLAGS="--batch-size 32 --threads 1",
        PART_BYTES="100000",  # 12 parts + the log and the benchmark
    )
    many = _run("train", env=env)
    assert many.returncode == 2 and "the device tool returns 8" in many.stderr

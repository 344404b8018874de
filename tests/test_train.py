"""Supervised training, resume after SIGKILL, eval JSON contract, checkpoint safety."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import SMALL_RUN, kill_after_first_epoch, logged_epochs, train_command

from fer_edge.cli import main
from fer_edge.data import load_dataset
from fer_edge.errors import CheckpointError, InputError
from fer_edge.preprocess import PreprocessSpec
from fer_edge.train.checkpoint import load_checkpoint
from fer_edge.train.nets import build
from fer_edge.train.predictor import predict_logits, tta_views


def test_resume_after_kill_loses_no_epoch_and_matches_uninterrupted(small_fer_dir, tmp_path):
    epochs = 4
    full = tmp_path / "full"
    subprocess.run(train_command(small_fer_dir, full, epochs), check=True, capture_output=True)

    killed = tmp_path / "killed"
    done_at_kill = kill_after_first_epoch(train_command(small_fer_dir, killed, epochs), killed)
    assert 1 <= done_at_kill < epochs, "the kill should land mid-run"

    subprocess.run(
        train_command(small_fer_dir, killed, epochs) + ["--resume"], check=True, capture_output=True
    )
    history = logged_epochs(killed)
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    a, b = load_checkpoint(full / "last.pt")["model"], load_checkpoint(killed / "last.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs after resume")
    assert (killed / "curves.png").stat().st_size > 1000
    assert not list(killed.glob(".*.tmp")), "temporary files of interrupted writes were left behind"
    assert (killed / "best" / "model.json").exists()


def test_fresh_run_refuses_to_overwrite(small_fer_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"x": 1}, out / "last.pt")
    rc = main(
        ["train", "--data", str(small_fer_dir), "--epochs", "1", "--out", str(out), *SMALL_RUN]
    )
    assert rc == 2


def test_loss_falls_and_eval_json_contract(small_fer_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        ["train", "--data", str(small_fer_dir), "--epochs", "6", "--out", str(out), *SMALL_RUN]
    )
    assert rc == 0
    history = logged_epochs(out)
    assert history[-1]["loss"] < history[0]["loss"]
    capsys.readouterr()
    png = tmp_path / "cm.png"
    rc = main(
        [
            "eval",
            "--model",
            str(out / "best"),
            "--data",
            str(small_fer_dir),
            "--split",
            "test",
            "--json",
            "--confusion",
            str(png),
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "macro_f1", "n", "per_class", "confusion", "skipped_classes"):
        assert key in report
    assert report["n"] == 7 * 15
    cm = np.array(report["confusion"])
    assert cm.shape == (7, 7) and cm.sum() == report["n"]
    assert report["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert set(report["per_class"]) == set(report["labels"])
    assert png.stat().st_size > 1000
    # the checkpoint itself is a valid MODEL too, and gives the same numbers as its bundle
    rc = main(
        [
            "eval",
            "--model",
            str(out / "best" / "model.pt"),
            "--data",
            str(small_fer_dir),
            "--split",
            "test",
            "--json",
        ]
    )
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(report["accuracy"])
    rc = main(
        ["eval", "--model", str(out / "best"), "--data", str(small_fer_dir), "--split", "test"]
        + ["--json", "--tta", "ten-crop"]
    )
    assert rc == 0 and json.loads(capsys.readouterr().out)["tta"] == "ten-crop"


@pytest.mark.parametrize("mode", ["flip", "ten-crop"])
def test_tta_logits_are_the_same_for_a_face_and_its_mirror_image(small_fer_dir, mode):
    """Both TTA view sets are closed under mirroring, so a mirrored face gets the same averaged
    logits; without TTA an (untrained, asymmetric) network's logits differ."""
    torch.manual_seed(0)
    net = build("vgg_small").eval()
    faces = load_dataset(small_fer_dir, "val").images[:16]
    mirrored = np.ascontiguousarray(faces[:, :, ::-1])
    spec = PreprocessSpec()
    plain = np.abs(predict_logits(net, faces, spec) - predict_logits(net, mirrored, spec)).max()
    averaged = predict_logits(net, faces, spec, tta=mode)
    assert np.abs(averaged - predict_logits(net, mirrored, spec, tta=mode)).max() < plain / 100
    assert len(tta_views(torch.zeros(1, 1, 48, 48), mode)) == {"flip": 2, "ten-crop": 10}[mode]
    with pytest.raises(InputError, match="ten-crop"):
        tta_views(torch.zeros(1, 1, 48, 48), "twelve-crop")


def test_corrupt_checkpoints_are_refused(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(empty)
    # random bytes, and random bytes behind a pickle header (torch's legacy loader then unpickles
    # garbage and fails in many ways: IndexError, KeyError, struct errors ...)
    rng = np.random.default_rng(0)
    junk = tmp_path / "junk.pt"
    for i in range(200):
        payload = rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()
        junk.write_bytes((b"\x80\x02" if i % 2 else b"") + payload)
        with pytest.raises(CheckpointError, match="cannot be loaded safely"):
            load_checkpoint(junk)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, evil)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(evil)
    good = tmp_path / "good.pt"
    torch.save({"model": {}}, good)
    with pytest.raises(CheckpointError, match="not a fer-edge checkpoint"):
        load_checkpoint(good)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(good)


XEON_AVX512_NO_BF16 = "flags : fpu sse2 avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni"
ZEN4 = "flags : fpu sse2 avx2 avx512f avx512bw avx512vl avx512_vnni avx512_bf16 avx512_vbmi2"
SAPPHIRE_RAPIDS = "flags : fpu avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8"


def test_native_bf16_is_read_from_the_cpu_flags():
    from fer_edge.train import engine

    assert not engine.native_bf16_in(XEON_AVX512_NO_BF16)
    assert engine.native_bf16_in(ZEN4) and engine.native_bf16_in(SAPPHIRE_RAPIDS)
    assert not engine.native_bf16_in("")


def test_cpu_name_and_flags_come_from_cpuinfo_text(monkeypatch):
    from fer_edge import cpu
    from fer_edge.train import engine

    epyc = (
        "processor : 0\nmodel name : AMD EPYC 9R14\n"
        + ZEN4
        + "\n\nprocessor : 1\nmodel name : AMD EPYC 9R14\n"
    )
    assert cpu.model_name_in(epyc) == "AMD EPYC 9R14"
    assert cpu.model_name_in("processor : 0\nCPU part : 0xd0c\nFeatures : fp asimd") is None
    monkeypatch.setattr(cpu, "cpuinfo_text", lambda: epyc)
    assert cpu.cpu_name() == "AMD EPYC 9R14" and "avx512_bf16" in cpu.cpu_flags()
    assert engine.cpu_has_native_bf16()
    monkeypatch.setattr(cpu, "cpuinfo_text", lambda: "model name : Xeon\n" + XEON_AVX512_NO_BF16)
    assert not engine.cpu_has_native_bf16() and cpu.cpu_name() == "Xeon"
    monkeypatch.setattr(cpu, "cpuinfo_text", lambda: "")  # not Linux: fp32, a name from platform
    assert not engine.cpu_has_native_bf16() and cpu.cpu_name()


@pytest.mark.parametrize("native_bf16", [True, False])
def test_cpu_training_autocasts_to_bf16_only_where_the_cpu_has_it(monkeypatch, native_bf16):
    """Both CPU paths on any CPU: oneDNN runs bf16 by emulation where the CPU lacks it, so
    forcing the detection exercises the bf16 path on an AVX-512-only Xeon too."""
    from fer_edge.train import engine

    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: native_bf16)
    cpu, net, x = torch.device("cpu"), torch.nn.Conv2d(1, 4, 3), torch.randn(2, 1, 8, 8)
    with engine.autocast(cpu, amp=True):
        y = net(x)
    assert y.dtype == (torch.bfloat16 if native_bf16 else torch.float32)
    with engine.autocast(cpu, amp=False):  # --no-amp
        assert net(x).dtype == torch.float32
    y.float().sum().backward()  # gradients reach the fp32 weights on both paths
    assert net.weight.grad is not None and net.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("no_amp", [False, True])
def test_train_benchmark_prints_one_json_line_and_writes_nothing(
    small_fer_dir, tmp_path, capsys, no_amp
):
    from fer_edge.train import engine

    out = tmp_path / "run"
    argv = ["train", "--data", str(small_fer_dir), "--out", str(out), "--arch", "vgg_small"]
    argv += ["--batch-size", "32", "--benchmark", "--benchmark-steps", "2", "--no-progress"]
    assert main(argv + (["--no-amp"] if no_amp else [])) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["command"] == "train" and record["arch"] == "vgg_small"
    assert record["images_per_s"] > 0 and record["batch_size"] == 32
    native = engine.amp_dtype(torch.device("cpu"), amp=True) is torch.bfloat16
    assert record["precision"] == ("bf16" if native and not no_amp else "fp32")
    assert not out.exists()


@pytest.mark.parametrize("native_bf16", [True, False])
def test_train_speed_script_times_every_part_of_the_step(
    small_fer_dir, monkeypatch, capsys, native_bf16
):
    """scripts/train_speed.py: one JSON line per part of the training step, then the summary of
    what each change is worth; every rate is a positive measured number. Both CPU paths: bf16
    lines only where the CPU has bf16 (forced both ways here)."""
    import runpy

    from fer_edge.train import engine

    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: native_bf16)
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_speed.py"
    argv = [str(script), "--data", str(small_fer_dir), "--arch", "vgg_small"]
    monkeypatch.setattr(sys, "argv", argv + ["--batch-size", "32", "--steps", "1", "--no-compile"])
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rates = {r["measure"]: r["images_per_s"] for r in records if r["measure"] != "summary"}
    expected = {"gather", "augment_standard", "augment_camera", "step_fp32", "train_step", "eval"}
    assert expected <= set(rates) and all(v > 0 for v in rates.values())
    assert ("step_bf16_channels_last" in rates) == native_bf16
    summary = records[-1]
    assert summary["measure"] == "summary" and summary["compiled_over_eager"] is None
    assert (summary["bf16_over_fp32"] is not None) == native_bf16
    assert 0 < summary["augment_share_of_train_step"] < 1


def test_ema_ships_the_weight_average_and_resumes_to_the_same_one(
    small_fer_dir, tmp_path, monkeypatch
):
    """--ema: validation scores the average and OUT/best ships it (not the raw weights); a run
    cut after its first epoch resumes to the same average as an uninterrupted one."""
    from fer_edge.bundle import load_bundle
    from fer_edge.train import engine, supervised

    def fit(out, **extra):
        options = dict(data=small_fer_dir, arch="vgg_small", size=24, epochs=2, batch_size=32)
        options |= dict(lr=0.05, ema=0.9, threads=1, progress=False, out=tmp_path / out)
        return supervised.fit(**(options | extra))

    def average(state):
        return {k[len("module.") :]: v for k, v in state["ema"].items() if k != "n_averaged"}

    class Killed(Exception):
        pass

    real_end = engine.Run.end_epoch

    def end_then_die(self, record, state):
        real_end(self, record, state)
        raise Killed

    monkeypatch.setattr(engine.Run, "end_epoch", end_then_die)
    with pytest.raises(Killed):
        fit("cut")
    after = {1: average(load_checkpoint(tmp_path / "cut" / "last.pt"))}
    monkeypatch.setattr(engine.Run, "end_epoch", real_end)
    fit("cut", resume=True)
    best = fit("whole")
    whole = load_checkpoint(tmp_path / "whole" / "last.pt")
    after[2] = average(whole)
    for k, v in whole["ema"].items():  # the resumed run reaches the same average
        assert torch.equal(v, load_checkpoint(tmp_path / "cut" / "last.pt")["ema"][k]), k
    history = logged_epochs(tmp_path / "whole")
    assert all(0 <= h["raw_val_accuracy"] <= 1 and 0 <= h["val_accuracy"] <= 1 for h in history)
    # OUT/best holds the average of its epoch, which differs from the raw weights
    epoch = load_bundle(best).meta["metrics"]["val"]["epoch"]
    shipped = load_checkpoint(best / "model.pt")["model"]
    for k, v in shipped.items():
        assert torch.equal(v, after[epoch][k]), k
    raw = whole["model"]
    assert any(not torch.equal(raw[k], after[2][k]) for k in raw if raw[k].is_floating_point())
    with pytest.raises(InputError, match="--ema"):
        fit("bad", ema=1.0)


def test_mixup_and_cutmix_mix_faces_and_targets_reproducibly(small_fer_dir, tmp_path):
    """Mixup blends whole faces, CutMix pastes a box of the partner whose area is 1 - lambda;
    the same generator gives the same mix; lambda = 1 is the plain loss; only ce mixes."""
    from fer_edge.train import supervised
    from fer_edge.train.augment import mix_batch, to_input
    from fer_edge.train.objective import CrossEntropy, ObjectiveSetup

    spec = PreprocessSpec()
    ds = load_dataset(small_fer_dir, "val")
    x = to_input(torch.from_numpy(ds.images[:16]), spec)
    mixed, perm, lam = mix_batch(x, torch.Generator().manual_seed(3), mixup=0.4)
    assert 0 < lam < 1 and sorted(perm.tolist()) == list(range(16))
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[perm])
    again = mix_batch(x, torch.Generator().manual_seed(3), mixup=0.4)
    assert torch.equal(again[0], mixed) and again[2] == lam
    cut, perm, lam = mix_batch(x, torch.Generator().manual_seed(4), cutmix=1.0)
    from_partner = (cut == x[perm]) & (cut != x)
    inside = from_partner.any(0).any(0)  # the pasted box
    assert inside.any() and 1 - inside.float().mean().item() == pytest.approx(lam, abs=0.02)
    assert torch.equal(cut[:, :, ~inside], x[:, :, ~inside])

    net = build("vgg_small")
    setup = ObjectiveSetup(spec, 0.1, torch.device("cpu"), ds.labels)
    ce = CrossEntropy(net, ds, ds, {}, setup)
    idx = torch.arange(16)
    net.eval()
    plain, whole = ce.loss(x, idx)["loss"], ce.mixed_loss(x, idx, perm, 1.0)["loss"]
    assert plain.item() == pytest.approx(whole.item(), rel=1e-6)

    options = dict(data=small_fer_dir, arch="vgg_small", size=24, epochs=1, batch_size=32)
    options |= dict(threads=1, progress=False, mixup=0.2, cutmix=1.0)
    assert (supervised.fit(**options, out=tmp_path / "mix") / "model.json").is_file()
    assert logged_epochs(tmp_path / "mix")[0]["loss"] > 0
    with pytest.raises(InputError, match="--method ce"):
        supervised.fit(**options, method="mim-spl", out=tmp_path / "mim")


def test_ema_decay_warms_up_so_the_average_leaves_the_random_start():
    """The n-th update uses min(decay, (1 + n) / (10 + n)): the running values below are that
    recursion by hand; a fixed 0.9 would give 1.1, 1.29, ... instead."""
    from torch.optim.swa_utils import AveragedModel

    from fer_edge.train.supervised import ema_with_warmup

    net = torch.nn.Linear(2, 1, bias=False)
    averaged = AveragedModel(net, multi_avg_fn=ema_with_warmup(0.9))
    expected, values = [], []
    for step in range(1, 40):
        with torch.no_grad():
            net.weight.fill_(float(step))
        averaged.update_parameters(net)
        values.append(averaged.module.weight[0, 0].item())
        n = step - 1
        d = min(0.9, (1 + n) / (10 + n))
        expected.append(float(step) if n == 0 else d * expected[-1] + (1 - d) * step)
    assert values == pytest.approx(expected, rel=1e-6)
    assert 1 - values[2] / 3 < 0.1  # near the weights after 3 updates, not near the start

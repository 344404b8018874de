"""Self-supervised pretraining: every method learns on real faces, checkpoints feed
``fer-edge train --init``, resume is exact, FRA heatmaps are drawn, bad input is refused."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from train_helpers import command_options

from fer_edge.cli import main
from fer_edge.errors import DatasetError, InputError
from fer_edge.train import engine, methods, pretrain
from fer_edge.train.checkpoint import load_checkpoint
from fer_edge.train.nets import build
from fer_edge.train.supervised import init_from

SIZE = 24  # vgg_small at 24 px: a 3x3 dense map, enough for the region branch and fast on CPU


def pretrain_args(data, out, method="fra", *extra: str) -> dict:
    return command_options("pretrain", [
        "--method", method, "--data", str(data), "--out", str(out), "--arch", "vgg_small",
        "--size", str(SIZE), "--batch-size", "32", "--limit", "160", "--warmup-epochs", "0.5",
        "--threads", "1", "--no-progress", "--set", "hidden=256", *extra,
    ])  # fmt: skip


def losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


# MoCo's queue only holds real keys from the second step on, and its key encoder moves slowly,
# so it gets a smaller queue and a higher learning rate to show learning within 20 steps.
EXTRA = {"moco": ("--set", "queue=64", "--lr", "1.0")}


@pytest.mark.parametrize("method", ["moco", "simclr", "byol", "fra"])
def test_loss_falls_on_real_faces(small_fer_dir, tmp_path, method):
    out = tmp_path / method
    model = pretrain.fit(
        **pretrain_args(small_fer_dir, out, method, "--epochs", "4", *EXTRA.get(method, ()))
    )
    curve = losses(out)
    assert len(curve) == 4 and all(np.isfinite(curve))
    # epoch 1 holds the warm-up (and MoCo's empty-queue first step), so compare with epoch 2
    assert curve[-1] < curve[1], f"{method} loss did not fall: {curve}"
    state = load_checkpoint(
        out / "last.pt",
        require=("backbone", "model", "arch", "in_channels", "preprocess", "method", "epoch"),
    )
    assert state["method"] == method and state["epoch"] == 3
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(state["backbone"][k], v)


def test_checkpoint_initialises_supervised_training(small_fer_dir, tmp_path):
    run = tmp_path / "ssl"
    pretrain.fit(**pretrain_args(small_fer_dir, run, "simclr", "--epochs", "1"))
    backbone = load_checkpoint(run / "last.pt", require=("backbone",))["backbone"]
    net = build("vgg_small")
    assert init_from(net, str(run / "last.pt")) == len(net.backbone.state_dict())
    for k, v in net.backbone.state_dict().items():
        assert torch.equal(v, backbone[k])
    code = main([
        "train", "--data", str(small_fer_dir), "--arch", "vgg_small", "--size", str(SIZE),
        "--epochs", "1", "--batch-size", "32", "--init", str(run / "last.pt"),
        "--out", str(tmp_path / "ft"), "--threads", "1", "--no-progress",
    ])  # fmt: skip
    assert code == 0 and (tmp_path / "ft" / "best" / "model.json").is_file()


def test_resume_continues_exactly(small_fer_dir, tmp_path, monkeypatch):
    whole = pretrain.fit(**pretrain_args(small_fer_dir, tmp_path / "whole", "fra", "--epochs", "2"))

    class Killed(Exception):
        pass

    real_end = engine.Run.end_epoch

    def end_then_die(self, record, state):
        real_end(self, record, state)
        raise Killed  # as if the process died right after the epoch-1 checkpoint

    monkeypatch.setattr(engine.Run, "end_epoch", end_then_die)
    with pytest.raises(Killed):
        pretrain.fit(**pretrain_args(small_fer_dir, tmp_path / "cut", "fra", "--epochs", "2"))
    monkeypatch.setattr(engine.Run, "end_epoch", real_end)
    with pytest.raises(InputError, match="--resume"):
        pretrain.fit(**pretrain_args(small_fer_dir, tmp_path / "cut", "fra", "--epochs", "2"))
    resumed = pretrain.fit(
        **pretrain_args(small_fer_dir, tmp_path / "cut", "fra", "--epochs", "2", "--resume")
    )
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert losses(tmp_path / "whole") == losses(tmp_path / "cut")


def test_fra_heatmaps_and_plain_unlabelled_folder(small_fer_dir, tmp_path):
    plain = tmp_path / "plain"  # no class folders: labels are -1, which pretraining never reads
    plain.mkdir()
    for f in sorted((small_fer_dir / "train").rglob("*.jpg"))[::2]:
        shutil.copy(f, plain / f"{f.parent.name}_{f.name}")
    heat = tmp_path / "heat"
    args = pretrain_args(
        plain,
        tmp_path / "run",
        "fra-mod",
        "--epochs",
        "1",
        "--heatmaps",
        str(heat),
        "--heatmap-faces",
        "3",
    )
    model = pretrain.fit(**args)
    assert model.cfg["tau"] == 1.1 and model.cfg["diversity"] > 0
    pngs = sorted(heat.glob("*.png"))
    assert len(pngs) == 3
    img = cv2.imread(str(pngs[0]))
    side = SIZE * 3
    assert img.shape == (side, side * (1 + model.cfg["regions"]), 3)
    assert img[:, side:].std() > 0  # overlays drawn, not blank


def test_fra_heatmaps_are_distributions_over_regions():
    cfg = methods.config("fra", {"regions": "5", "hidden": "64"})
    model = methods.build("fra", "vgg_small", 1, cfg).eval()
    maps = model.region_maps(torch.randn(2, 1, 32, 32))
    assert maps.shape == (2, 5, 4, 4)
    torch.testing.assert_close(maps.sum(1), torch.ones(2, 4, 4))
    out = model.train()(torch.randn(4, 1, 32, 32), torch.randn(4, 1, 32, 32))
    # region-assignment CE against an identical momentum network is its entropy: at most log N
    assert 0 < out["loss_r"] <= 2 * np.log(5) + 1e-4
    assert 0 < out["diversity"] <= np.log(5) + 1e-4


def test_help_lists_every_method(capsys):
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for name in methods.METHODS:
        assert f"  {name} " in text
    assert set(methods.METHODS) >= {"moco", "simclr", "byol", "fra"}


def test_a_queue_spanning_the_dataset_is_warned_about(small_fer_dir, tmp_path, capsys):
    pretrain.fit(**pretrain_args(small_fer_dir, tmp_path / "big", "moco", "--epochs", "1"))
    assert "the queue (4096 keys) is not smaller than the dataset (160 faces)" in (
        capsys.readouterr().err
    )
    pretrain.fit(
        **pretrain_args(small_fer_dir, tmp_path / "ok", "moco", "--epochs", "1", *EXTRA["moco"])
    )
    assert "warning" not in capsys.readouterr().err


def test_bad_input_is_refused(small_fer_dir, tmp_path, capsys):
    with pytest.raises(InputError, match="no setting 'nope'"):
        methods.config("byol", {"nope": "1"})
    with pytest.raises(InputError, match="wants a int"):
        methods.config("moco", {"queue": "big"})
    # booleans from the command line: "false" must not become True
    assert methods.settings("m", {"flag": True}, {}, {"flag": "false"}) == {"flag": False}
    assert methods.settings("m", {"flag": False}, {}, {"flag": "yes"}) == {"flag": True}
    with pytest.raises(InputError, match="wants a bool"):
        methods.settings("m", {"flag": False}, {}, {"flag": "maybe"})
    with pytest.raises(InputError, match="region heatmaps"):
        pretrain.fit(
            **pretrain_args(
                small_fer_dir, tmp_path / "a", "byol", "--heatmaps", str(tmp_path / "h")
            )
        )
    with pytest.raises(DatasetError, match="fewer than one batch"):
        pretrain.fit(**pretrain_args(small_fer_dir, tmp_path / "b", "byol", "--batch-size", "512"))
    assert (
        main(
            [
                "pretrain",
                "--method",
                "simclr",
                "--data",
                str(tmp_path / "missing"),
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_fine_tuning_protocol_protects_the_pretrained_backbone(
    small_fer_dir, tmp_path, monkeypatch
):
    """--head-epochs N trains the head alone for N epochs (backbone weights and BatchNorm
    statistics exactly the pretrained ones), then everything; --backbone-lr-scale 0 keeps the
    backbone's weights while the head learns."""
    from fer_edge.train import supervised

    run = tmp_path / "ssl"
    pretrain.fit(**pretrain_args(small_fer_dir, run, "simclr", "--epochs", "1"))
    pretrained = load_checkpoint(run / "last.pt", require=("backbone",))["backbone"]
    states, original = [], engine.run_epochs

    def capturing(*args, state_fn, on_epoch_end, **kw):
        def hook(epoch, record):
            states.append({k: v.clone() for k, v in state_fn(epoch)["model"].items()})
            on_epoch_end(epoch, record)

        return original(*args, state_fn=state_fn, on_epoch_end=hook, **kw)

    monkeypatch.setattr(engine, "run_epochs", capturing)

    def tuned(out, *extra):
        states.clear()
        supervised.fit(**command_options("train", [
            "--data", str(small_fer_dir), "--arch", "vgg_small", "--size", str(SIZE),
            "--batch-size", "32", "--init", str(run / "last.pt"), "--out", str(tmp_path / out),
            "--threads", "1", "--no-progress", *extra,
        ]))  # fmt: skip
        return list(states)

    def backbone_same(state, buffers=True):
        return all(
            torch.equal(state[f"backbone.{k}"], v)
            for k, v in pretrained.items()
            if buffers or not ("running" in k or "num_batches" in k)
        )

    first, second, third = tuned("lpft", "--epochs", "3", "--head-epochs", "2")
    assert backbone_same(first) and backbone_same(second)
    assert not torch.equal(first["head.weight"], second["head.weight"])
    assert not backbone_same(third, buffers=False)
    (last,) = tuned("slow", "--epochs", "1", "--backbone-lr-scale", "0")
    assert backbone_same(last, buffers=False) and not backbone_same(last)  # BN stats do move
    with pytest.raises(InputError, match="--init"):
        supervised.fit(
            data=small_fer_dir, arch="vgg_small", epochs=2, head_epochs=1, out=tmp_path / "x"
        )

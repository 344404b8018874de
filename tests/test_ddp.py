"""Distributed pretraining: two gloo processes on CPU (what torchrun starts on GPUs, minus NCCL)
train a few steps on real faces and must end with identical weights, queues and statistics."""

from __future__ import annotations

import argparse
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from fer_edge.train import methods, pretrain
from fer_edge.train.checkpoint import load_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, argv: list[str], out: str) -> None:
    # the variables torchrun sets
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    p = argparse.ArgumentParser()
    pretrain.add_arguments(p)
    model = pretrain.fit(p.parse_args(argv))
    torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))


# the two methods whose losses use collectives: MoCo enqueues all ranks' keys, SimCLR takes
# negatives (with gradients) from all ranks
@pytest.mark.parametrize("method", ["moco", "simclr"])
def test_two_ranks_end_identical(small_fer_dir, tmp_path, method):
    run = tmp_path / "run"
    argv = [
        "--method", method, "--data", str(small_fer_dir), "--out", str(run), "--arch", "vgg_small",
        "--size", "24", "--batch-size", "32", "--limit", "160", "--epochs", "1", "--warmup-epochs", "0",
        "--threads", "1", "--no-progress", "--device", "cpu", "--set", "hidden=128",
    ]  # fmt: skip
    mp.spawn(_worker, args=(2, _free_port(), argv, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"rank weights differ at {k}"
    torch.manual_seed(0)  # what pretrain.fit starts from
    initial = methods.build(
        method, "vgg_small", 1, methods.config(method, {"hidden": "128"})
    ).state_dict()
    trained = [k for k, v in r0.items() if v.is_floating_point() and not torch.equal(v, initial[k])]
    assert any(k.startswith("encoder.backbone.") for k in trained), "no training happened"
    if method == "moco":
        assert int(r0["queue_filled"]) == 5 * 2 * 32  # steps x views x global batch
    state = load_checkpoint(run / "last.pt", require=("backbone", "config"))
    assert state["config"]["world_size"] == 2
    for k, v in state["model"].items():
        assert torch.equal(v, r0[k])
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1

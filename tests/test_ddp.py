"""Distributed pretraining: two gloo processes on CPU (what torchrun starts on GPUs, minus NCCL)
train a few steps on real faces and must end with identical weights, queues and statistics."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp
from train_helpers import command_options

from fer_edge.train import methods, pretrain
from fer_edge.train.checkpoint import load_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, jobs: list[tuple[int, list[str], str]]) -> None:
    for (
        port,
        argv,
        out,
    ) in jobs:  # one spawn for all jobs: starting processes costs more than training
        # the variables torchrun sets
        os.environ.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        model = pretrain.fit(**command_options("pretrain", argv))
        torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))


# the two methods whose losses use collectives: MoCo enqueues all ranks' keys, SimCLR takes
# negatives (with gradients) from all ranks
METHODS = ("moco", "simclr")


def test_two_ranks_end_identical(small_fer_dir, tmp_path):
    jobs = []
    for method in METHODS:
        (tmp_path / method).mkdir()
        argv = [
            "--method", method, "--data", str(small_fer_dir), "--out", str(tmp_path / method / "run"),
            "--arch", "vgg_small", "--size", "24", "--batch-size", "32", "--limit", "160", "--epochs", "1",
            "--warmup-epochs", "0", "--threads", "1", "--no-progress", "--device", "cpu", "--set", "hidden=128",
        ]  # fmt: skip
        jobs.append((_free_port(), argv, str(tmp_path / method)))
    mp.spawn(_worker, args=(2, jobs), nprocs=2, join=True)
    for method in METHODS:
        check_identical(tmp_path / method, method)


def check_identical(folder, method: str) -> None:
    run = folder / "run"
    r0 = torch.load(folder / "rank0.pt", weights_only=True)
    r1 = torch.load(folder / "rank1.pt", weights_only=True)
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"{method}: rank weights differ at {k}"
    torch.manual_seed(0)  # what pretrain.fit starts from
    initial = methods.build(
        method, "vgg_small", 1, methods.config(method, {"hidden": "128"})
    ).state_dict()
    trained = [k for k, v in r0.items() if v.is_floating_point() and not torch.equal(v, initial[k])]
    assert any(k.startswith("encoder.backbone.") for k in trained), (
        f"{method}: no training happened"
    )
    if method == "moco":
        assert int(r0["queue_filled"]) == 5 * 2 * 32  # steps x views x global batch
    state = load_checkpoint(run / "last.pt", require=("backbone", "config"))
    assert state["config"]["world_size"] == 2
    for k, v in state["model"].items():
        assert torch.equal(v, r0[k])
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1

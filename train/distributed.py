"""torch.distributed helpers for multi-GPU and multi-node training under ``torchrun``.

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything here is a no-op for a
single process, so the same training code runs alone, on several GPUs (NCCL) or on CPUs (gloo).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fer_edge.errors import InputError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched() -> bool:
    """True when started by torchrun (or anything else that sets its variables)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> Context:
    """Join the process group torchrun describes: NCCL with one GPU per process on CUDA, gloo on
    CPU. ``device`` is the single-process choice; under torchrun a CUDA device becomes
    ``cuda:LOCAL_RANK``."""
    if not launched():
        return Context(device=device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise InputError(
                f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices are visible"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank=rank, world_size=world, device=device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def shard(batch: torch.Tensor, ctx: Context) -> torch.Tensor:
    """This rank's share of a global batch of indices (every rank gets the same count)."""
    return batch[ctx.rank :: ctx.world_size] if ctx.enabled else batch


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank (rank order), without gradient."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Like :func:`gather`, but gradients flow back to every rank's ``x`` (SimCLR negatives)."""
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()))


@torch.no_grad()
def average_buffers(module: torch.nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks and take rank
    0's integer ones, so that a checkpoint is the same whichever rank wrote it. Needed where BN is
    per-rank (CPU/gloo has no SyncBatchNorm)."""
    if world_size() == 1:
        return
    for b in module.buffers():
        if b.is_floating_point():
            dist.all_reduce(b, op=dist.ReduceOp.SUM)
            b.div_(world_size())
        else:
            dist.broadcast(b, src=0)


def average_scalars(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of each scalar over ranks (for logging)."""
    if world_size() == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / world_size() for k, v in zip(keys, t.tolist(), strict=True)}

"""The training engine shared by supervised training and every self-supervised method.

It owns what every method needs the same way: device and threads, data on the device as uint8,
deterministic per-epoch batching, the learning-rate schedule, AMP, a checkpoint after every epoch
written atomically, ``--resume`` from the last one, the metrics log, the training-curve PNG, and a
progress bar. A method supplies only ``step(batch_index) -> {loss names: floats}`` and optionally an
end-of-epoch evaluation.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fer_edge import atomic, cpu
from fer_edge.errors import CheckpointError, InputError
from fer_edge.plots import pyplot, save

from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} asked for, but no CUDA device is available")
    return torch.device(name)


def start(device: str = "auto", threads: int | None = None) -> torch.device:
    """What every training, fine-tuning and probing run does first: torch's CPU threads, then
    the device it runs on."""
    set_threads(threads)
    return pick_device(device)


def make_optimizer(
    modules: list[torch.nn.Module],
    kind: str,
    lr: float,
    weight_decay: float,
    *,
    nesterov: bool = False,
    slow: torch.nn.Module | None = None,
    slow_factor: float = 1.0,
) -> torch.optim.Optimizer:
    """SGD (momentum 0.9) or AdamW over the trainable parameters of ``modules``; the parameters
    of ``slow`` (one of them, or a part of one: a pretrained backbone) learn at ``slow_factor``
    times ``lr`` (the schedule scales every group alike, so the ratio holds).

    One weight-decay rule for every run (pretraining, supervised training and the fine-tuning of
    distill, prune and QAT), chosen because it is the one that regularises: decay on weight
    matrices and conv kernels only, never on biases, BatchNorm scales and shifts, or FRA's learnt
    region queries (embeddings, not weights). Decaying a bias or a BN gain does not shrink what
    the network can express, it only drags the normalisation towards zero (the usual practice,
    as in BYOL and timm). Fine-tuning used to decay every parameter; at its 1e-4 and few epochs
    that changes no pinned result.
    """
    named = [(n, p) for m in modules for n, p in m.named_parameters() if p.requires_grad]
    decayed = {id(p) for n, p in named if p.ndim > 1 and "queries" not in n}
    slowed = set() if slow is None else {id(p) for p in slow.parameters()}
    groups = [
        {
            "params": [p for _, p in named if (id(p) in decayed, id(p) in slowed) == key],
            "weight_decay": weight_decay if key[0] else 0.0,
            "lr": lr * (slow_factor if key[1] else 1.0),
        }
        # the slow groups only when asked for: checkpoints hold the optimizer's group layout
        for key in [(True, False), (False, False)] + ([(True, True), (False, True)] if slow else [])
    ]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=nesterov)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise InputError(f"optimizer must be sgd or adamw, got {kind!r}")


def native_bf16_in(cpuinfo: str) -> bool:
    """Whether ``/proc/cpuinfo`` text shows bf16 arithmetic in hardware: AVX512_BF16 or
    AMX-BF16 (Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later)."""
    return bool(set(cpuinfo.split()) & {"avx512_bf16", "amx_bf16"})


def cpu_has_native_bf16() -> bool:
    """:func:`native_bf16_in` for this machine's CPU. Read from the kernel's CPU flags because
    torch's own check (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) also says yes on plain
    AVX-512, where oneDNN emulates bf16 and trains slower than fp32. Off Linux there is no
    cheap way to tell, so it stays on the safe fp32 path."""
    return native_bf16_in(cpu.cpuinfo_text())


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype training uses: bf16 on a GPU and on CPUs with native bf16 (about 2x
    faster than fp32 there, no loss scaling needed), None (fp32) elsewhere or with ``amp``
    off (``--no-amp``)."""
    if not amp:
        return None
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return None


def autocast(device: torch.device, amp: bool):
    """The autocast context of :func:`amp_dtype` (a no-op when it is fp32)."""
    dtype = amp_dtype(device, amp)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def time_steps(
    step: Callable[[torch.Tensor, torch.Generator], object],
    batches: list[torch.Tensor],
    *,
    seed: int,
    steps: int,
    device: torch.device,
    warmup: int = 3,
) -> float:
    """Images/s of ``steps`` training steps after ``warmup`` untimed ones (the batches repeat
    when there are fewer); what ``--benchmark`` prints."""
    if steps < 1:
        raise InputError(f"--benchmark-steps must be at least 1, got {steps}")
    g = epoch_generator(seed, 0)
    need = warmup + steps
    batches = (batches * (need // max(1, len(batches)) + 1))[:need]
    for idx in batches[:warmup]:
        step(idx, g)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for idx in batches[warmup:]:
        step(idx, g)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return sum(len(b) for b in batches[warmup:]) / (time.perf_counter() - t0)


def benchmark_record(
    rate: float, *, command: str, device: torch.device, amp: bool, **fields: object
) -> str:
    """The one JSON line ``--benchmark`` prints."""
    dtype = amp_dtype(device, amp)
    return json.dumps(
        {
            "command": command,
            **fields,
            "device": str(device),
            "precision": "bf16" if dtype is torch.bfloat16 else "fp32",
            "threads": torch.get_num_threads(),
            "images_per_s": round(rate, 1),
        }
    )


def benchmark(
    step: Callable[[torch.Tensor, torch.Generator], object],
    batches: list[torch.Tensor],
    *,
    seed: int,
    steps: int,
    device: torch.device,
    amp: bool,
    command: str,
    fields: dict,
) -> str:
    """``--benchmark``: time ``steps`` training steps (:func:`time_steps`) and return the JSON
    line to print, with ``fields`` describing the run."""
    rate = time_steps(step, batches, seed=seed, steps=steps, device=device)
    return benchmark_record(rate, command=command, device=device, amp=amp, **fields)


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, drop_last: bool = True
) -> list[torch.Tensor]:
    """The shuffled batch indices of one epoch; a function of (seed, epoch) alone, so a resumed
    run sees exactly the batches an uninterrupted one would."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    return [perm[i : i + batch_size] for i in range(0, stop, batch_size)]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Augmentation randomness of one epoch, also a function of (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 7_919 + epoch * 104_729 + 1)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def plot_curves(
    histories: dict[str, list[dict]], path: Path, title: str, metrics: list[str] | None = None
) -> None:
    """Training curves of one or more runs (name -> per-epoch records), epochs on x: one panel
    per metric family (losses; accuracies and other scores), a line per run and metric; only
    ``metrics`` when given. Draws nothing when there is nothing to draw."""
    plt = pyplot()

    keys = sorted(
        {
            k
            for history in histories.values()
            for h in history
            for k, v in h.items()
            if k != "epoch" and isinstance(v, int | float)
        }
    )
    keys = [k for k in keys if metrics is None or k in metrics]
    losses = [k for k in keys if "loss" in k]
    scores = [k for k in keys if k not in losses and not k.startswith(("lr", "time", "images"))]
    panels = [p for p in (losses, scores) if p]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, group in zip(axes[0], panels, strict=True):
        for name, history in histories.items():
            epochs = [h["epoch"] for h in history]
            for k in group:
                if any(k in h for h in history):
                    label = k if len(histories) == 1 else f"{name} {k}"
                    values = [h.get(k, float("nan")) for h in history]
                    ax.plot(epochs, values, marker=".", label=label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)


def read_history(run_dir: Path) -> list[dict]:
    """The per-epoch records a run folder's ``metrics.jsonl`` holds ([] when it has none)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Run:
    """A training run's folder: ``last.pt`` (resume point), ``metrics.jsonl``, ``curves.png``."""

    out: Path
    config: dict
    history: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Fail now, not after the first epoch: the folder must exist and take files.
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.out):
                pass
            # Two runs with the same --out would overwrite each other's last.pt and best/. The
            # ranks of one distributed run share it: the first rank holds the lock for all.
            if distributed.rank() == 0:
                atomic.lock_folder(self.out, "run folder")
        except OSError as e:
            raise InputError(
                f"cannot write to the run folder {self.out}: {e.strerror or e}"
            ) from None

    @property
    def last(self) -> Path:
        return self.out / "last.pt"

    def resume_state(self, resume: bool) -> dict | None:
        if not resume:
            if self.last.exists():
                raise InputError(
                    f"{self.out} already holds a run; pass --resume to continue it or choose another --out"
                )
            return None
        # Temporary files of atomic writes that a kill interrupted: never read, safe to drop.
        for stray in self.out.glob(".*.tmp"):
            stray.unlink(missing_ok=True)
        if not self.last.exists():
            return None
        state = load_checkpoint(self.last, require=("epoch", "model", "optimizer", "config"))
        mismatch = {
            k: (state["config"].get(k), v)
            for k, v in self.config.items()
            if k in RESUME_MUST_MATCH and state["config"].get(k) != v
        }
        if mismatch:
            detail = ", ".join(f"{k}: run has {a!r}, asked {b!r}" for k, (a, b) in mismatch.items())
            raise CheckpointError(
                f"cannot resume {self.last}: the configuration differs ({detail})"
            )
        self.history = list(state.get("history", []))
        return state

    def end_epoch(self, record: dict, state: dict) -> None:
        self.history.append(record)
        state["history"] = self.history
        save_checkpoint(self.last, state)
        atomic.write_text(
            self.out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in self.history)
        )
        plot_curves({self.out.name: self.history}, self.out / "curves.png", self.out.name)


# Changing these between a run and its resume would silently train a different model.
RESUME_MUST_MATCH = (
    "arch",
    "method",
    "method_config",
    "label_noise",
    "batch_size",
    "epochs",
    "seed",
    "size",
    "channels",
    "data",
)


class Progress:
    """tqdm when installed and attached to a terminal, a line per epoch otherwise. The bar stays
    on screen when it closes, with the summary as its last words, so the end of a run shows
    what it did."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.bar = None
        self.desc, self.total, self.t0 = desc, total, time.time()
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, leave=True, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, **postfix: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def close(self, summary: str) -> None:
        line = f"{summary} ({time.time() - self.t0:.0f}s)"
        if self.bar is not None:
            self.bar.set_postfix_str(line, refresh=True)
            self.bar.close()
            return
        print(f"{self.desc}: {line}", file=sys.stderr, flush=True)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))


def run_epochs(
    run: Run,
    *,
    epochs: int,
    start_epoch: int,
    steps: Callable[[int], list[torch.Tensor]],
    step: Callable[[torch.Tensor, torch.Generator], dict[str, float]],
    evaluate: Callable[[int], dict[str, float]] | None,
    state_fn: Callable[[int], dict],
    seed: int,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    is_main: bool = True,
    reduce: Callable[[dict], dict] | None = None,
) -> list[dict]:
    """The epoch loop: ``steps(epoch)`` gives the batches, ``step`` trains on one and returns its
    losses, ``evaluate`` scores the epoch, ``state_fn(epoch)`` is what the checkpoint holds.

    Distributed runs call this on every rank: ``reduce`` (a collective, e.g. the mean over ranks)
    turns each rank's epoch record into the run's, and only the ``is_main`` rank prints and
    writes the checkpoint, metrics and curves."""
    for epoch in range(start_epoch, epochs):
        batches = steps(epoch)
        g = epoch_generator(seed, epoch)
        # Dropout and other global-RNG users draw from a stream that is also a function of
        # (seed, epoch), so a resumed run repeats an uninterrupted one exactly.
        torch.manual_seed(seed * 1_000_033 + epoch)
        bar = Progress(len(batches), f"epoch {epoch + 1}/{epochs}", progress)
        sums: dict[str, float] = {}
        t0 = time.time()
        for idx in batches:
            losses = step(idx, g)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update(**losses)
        seconds = time.time() - t0
        record = {"epoch": epoch + 1, **{k: v / max(1, len(batches)) for k, v in sums.items()}}
        record["images_per_s"] = sum(len(b) for b in batches) / max(seconds, 1e-9)
        if reduce is not None:
            reduced = reduce(record)
            record = {"epoch": epoch + 1, **{k: v for k, v in reduced.items() if k != "epoch"}}
        if evaluate is not None:
            record.update(evaluate(epoch))
        record["time_s"] = seconds
        if is_main:
            bar.close(", ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("epoch",)))
        if on_epoch_end is not None:  # before the checkpoint, so it records what this did
            on_epoch_end(epoch, record)
        if is_main:
            run.end_epoch(record, state_fn(epoch))
        else:
            run.history.append(record)
    return run.history

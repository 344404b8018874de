"""Fine-tuning shared by distill, prune and QAT, on top of the training engine: the same data
loading, on-device augmentation, warm-up + cosine schedule, per-epoch atomic checkpoints and
``--resume`` as ``fer-edge train``. A command supplies its loss and its checkpoint contents."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from fer_edge.bundle import Bundle
from fer_edge.errors import InputError
from fer_edge.preprocess import PreprocessSpec
from fer_edge.train import engine
from fer_edge.train.augment import AUGMENTS
from fer_edge.train.model_io import save_model_bundle
from fer_edge.train.supervised import evaluate_split, load_train_val


def add_arguments(p: argparse.ArgumentParser, *, epochs: int, lr: float, out: str) -> None:
    """Options every compression command shares."""
    p.add_argument(
        "--data",
        required=True,
        help="split root with train/ and val/ (or any layout fer-edge train reads)",
    )
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--val-data", help="separate validation dataset")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--lr", type=float, default=lr, help="peak learning rate (AdamW, warm-up then cosine)"
    )
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument(
        "--augment",
        default="standard",
        choices=list(AUGMENTS),
        help="training augmentation (see fer-edge train --help)",
    )
    p.add_argument(
        "--limit-per-class",
        type=int,
        help="at most this many training faces per class (quick runs)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", default=out, help="run folder: last.pt, metrics.jsonl, curves.png, bundle/"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument(
        "--no-amp",
        action="store_true",
        help="train in fp32 (default: bf16 autocast on a GPU and on CPUs with native bf16; "
        "QAT always trains in fp32)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


class Finetune:
    """One resumable fine-tuning run in ``args.out``."""

    def __init__(self, args: argparse.Namespace, config: dict, spec: PreprocessSpec):
        engine.set_threads(args.threads)
        self.args, self.spec = args, spec
        self.device = engine.pick_device(args.device)
        self.out = Path(args.out)
        self.config = {
            **config,
            "data": str(Path(args.data).resolve()),
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "lr": args.lr,
            "limit_per_class": args.limit_per_class,
            "augment": args.augment,
        }
        self.run = engine.Run(self.out, self.config)
        self.resume_state = self.run.resume_state(args.resume)
        args.label_fraction = 1.0
        self.train, self.val = load_train_val(args, spec)
        print(f"train: {self.train.summary()}\nval: {self.val.summary()}", file=sys.stderr)
        if len(self.train) < args.batch_size:
            raise InputError(
                f"{len(self.train)} training faces is fewer than one batch of {args.batch_size}"
            )
        self.steps_per_epoch = len(self.train) // args.batch_size
        self.images = torch.from_numpy(self.train.images).to(self.device)
        self.labels = torch.from_numpy(self.train.labels).to(self.device)
        self.augment = AUGMENTS[args.augment](spec)
        self.start_epoch = 0 if self.resume_state is None else int(self.resume_state["epoch"]) + 1

    def autocast(self):
        """bf16 autocast where training uses it (``engine.autocast``), unless --no-amp."""
        return engine.autocast(self.device, not self.args.no_amp)

    def optimizer(self, params) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        """AdamW with warm-up over the first tenth of the run, then cosine decay."""
        opt = torch.optim.AdamW(list(params), lr=self.args.lr, weight_decay=self.args.weight_decay)
        total = self.steps_per_epoch * self.args.epochs
        return opt, engine.warmup_cosine(opt, total, max(1, total // 10))

    def batch(self, idx: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented, normalised inputs and labels of one batch."""
        idx = idx.to(self.device)
        return self.augment(self.images[idx], g), self.labels[idx]

    @staticmethod
    def update(
        loss: torch.Tensor, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler
    ) -> float:
        """One optimiser and schedule step on ``loss``; returns its value."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return float(loss.item())

    def save_bundle(self, state: dict, metrics: dict) -> Bundle:
        """The run's result as ``OUT/bundle``, with its configuration as the source."""
        return save_model_bundle(
            self.out / "bundle",
            state,
            metrics=metrics,
            source={"config": self.config, "torch": torch.__version__},
        )

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        return evaluate_split(model, self.val, self.spec, self.device)

    def fit(
        self,
        step: Callable[[torch.Tensor, torch.Generator], dict[str, float]],
        state_fn: Callable[[int], dict],
        evaluate: Callable[[int], dict[str, float]],
        on_epoch_start: Callable[[int], None] | None = None,
    ) -> list[dict]:
        """Run the remaining epochs; ``on_epoch_start(epoch)`` runs before each one's batches."""

        def steps(epoch: int) -> list[torch.Tensor]:
            if on_epoch_start is not None:
                on_epoch_start(epoch)
            return engine.epoch_batches(
                len(self.train), self.args.batch_size, self.args.seed, epoch
            )

        return engine.run_epochs(
            self.run,
            epochs=self.args.epochs,
            start_epoch=self.start_epoch,
            steps=steps,
            step=step,
            evaluate=evaluate,
            state_fn=state_fn,
            seed=self.args.seed,
            progress=not self.args.no_progress,
        )

"""Fine-tuning shared by distill, prune and QAT, on top of the training engine: the same data
loading, on-device augmentation, warm-up + cosine schedule, optimizer, per-epoch atomic
checkpoints and resume as ``fer_edge.train.fit``. A compression function supplies its loss and its
checkpoint contents, and passes its caller's run options (``**options``) through to
:class:`Finetune`."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from fer_edge.bundle import Bundle
from fer_edge.data import load_train_val
from fer_edge.errors import InputError
from fer_edge.preprocess import PreprocessSpec
from fer_edge.train import engine
from fer_edge.train.augment import training_augment
from fer_edge.train.model_io import save_model_bundle
from fer_edge.train.objective import evaluate_split


class Finetune:
    """One resumable fine-tuning run in ``out``: the compression function's ``config`` plus the
    run options, which every compression function takes as keyword arguments."""

    def __init__(
        self,
        config: dict,
        spec: PreprocessSpec,
        *,
        data: str | os.PathLike,
        epochs: int,
        lr: float,
        out: str | os.PathLike,
        train_split: str = "train",
        val_split: str = "val",
        val_data: str | os.PathLike | None = None,
        batch_size: int = 128,
        weight_decay: float = 1e-4,
        augment: str = "standard",
        limit_per_class: int | None = None,
        seed: int = 0,
        resume: bool = False,
        device: str = "auto",
        threads: int | None = None,
        amp: bool = True,
        progress: bool = True,
    ):
        self.spec, self.epochs, self.batch_size, self.seed = spec, epochs, batch_size, seed
        self.lr, self.weight_decay, self.amp, self.progress = lr, weight_decay, amp, progress
        self.device = engine.start(device, threads)
        self.out = Path(out)
        self.config = {
            **config,
            "size": spec.size,
            "channels": spec.channels,
            "data": str(Path(data).resolve()),
            "epochs": epochs,
            "batch_size": batch_size,
            "seed": seed,
            "lr": lr,
            "limit_per_class": limit_per_class,
            "augment": augment,
        }
        self.run = engine.Run(self.out, self.config)
        self.resume_state = self.run.resume_state(resume)
        self.train, self.val = load_train_val(
            data,
            spec=spec,
            train_split=train_split,
            val_split=val_split,
            val_data=val_data,
            seed=seed,
            limit_per_class=limit_per_class,
            progress=progress,
        )
        print(f"train: {self.train.summary()}\nval: {self.val.summary()}", file=sys.stderr)
        if len(self.train) < batch_size:
            raise InputError(
                f"{len(self.train)} training faces is fewer than one batch of {batch_size}"
            )
        self.steps_per_epoch = len(self.train) // batch_size
        self.images = torch.from_numpy(self.train.images).to(self.device)
        self.labels = torch.from_numpy(self.train.labels).to(self.device)
        self.augment = training_augment(augment, spec)
        self.start_epoch = 0 if self.resume_state is None else int(self.resume_state["epoch"]) + 1
        torch.manual_seed(seed)  # the caller builds its network next

    def autocast(self):
        """bf16 autocast where training uses it (``engine.autocast``), unless ``amp=False``."""
        return engine.autocast(self.device, self.amp)

    def optimizer(
        self, modules: list[torch.nn.Module]
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        """AdamW over ``modules`` (``engine.make_optimizer``'s weight-decay rule) with warm-up
        over the first tenth of the run, then cosine decay."""
        opt = engine.make_optimizer(modules, "adamw", self.lr, self.weight_decay)
        total = self.steps_per_epoch * self.epochs
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
            return engine.epoch_batches(len(self.train), self.batch_size, self.seed, epoch)

        return engine.run_epochs(
            self.run,
            epochs=self.epochs,
            start_epoch=self.start_epoch,
            steps=steps,
            step=step,
            evaluate=evaluate,
            state_fn=state_fn,
            seed=self.seed,
            progress=self.progress,
        )

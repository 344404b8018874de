"""Where a CPU training step's time goes: one JSON line per measurement, then a summary line.

Measures, for one architecture at one batch size, the images/s of each part of the supervised
training step (``fer_edge.train.supervised``'s step, built from the same library pieces):

- ``gather``: indexing the batch out of the uint8 training tensor (the data path; the faces are
  decoded once, before training);
- ``augment_standard``, ``augment_camera``: the batched augmentation alone;
- ``step_fp32``, ``step_fp32_channels_last``, ``step_bf16``, ``step_bf16_channels_last``:
  forward, backward and SGD update on an already augmented batch;
- ``step_bf16_channels_last_1_thread``: the same on one thread (does the second core pay?);
- ``step_compiled``: the bf16 channels-last step with ``torch.compile`` (its compile time is a
  field of the line);
- ``train_step``: augmentation plus step, what an epoch repeats;
- ``eval``: inference at batch 512, what the validation pass runs.

bf16 lines are skipped on CPUs without native bf16 (``engine.cpu_has_native_bf16``), where
training runs in fp32. Run it on a quiet machine; pass ``--no-compile`` to skip the slowest part::

    python scripts/train_speed.py --arch vgg --batch-size 128 --threads 2 > speed.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from fer_edge.cpu import cpu_name
from fer_edge.data import load_dataset
from fer_edge.preprocess import PreprocessSpec
from fer_edge.train import engine
from fer_edge.train.augment import to_input, training_augment
from fer_edge.train.nets import build


def rate(fn, batch_size: int, steps: int, warmup: int = 2) -> float:
    """Images/s of ``fn`` (one batch per call) over ``steps`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return batch_size * steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="../shared/data/fer2013", help="FER-2013 split root")
    p.add_argument("--arch", default="vgg")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    spec, bs = PreprocessSpec(), args.batch_size
    ds = load_dataset(args.data, "train", spec=spec)
    images = torch.from_numpy(ds.images)
    labels = torch.from_numpy(ds.labels)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(ds), generator=g)[:bs]
    bf16 = engine.cpu_has_native_bf16()
    common = {
        "arch": args.arch,
        "batch_size": bs,
        "cpu": cpu_name(),
        "torch": torch.__version__,
    }
    results = {}

    def emit(name: str, images_per_s: float, **fields) -> None:
        results[name] = images_per_s
        line = {"measure": name, "images_per_s": round(images_per_s, 1), **common}
        print(json.dumps({**line, "threads": torch.get_num_threads(), **fields}), flush=True)

    emit("gather", rate(lambda: images[idx].contiguous(), bs, 50))
    for name in ("standard", "camera"):
        augment = training_augment(name, spec)
        emit(f"augment_{name}", rate(lambda a=augment: a(images[idx], g), bs, args.steps * 4))

    x_aug = training_augment("standard", spec)(images[idx], g)
    y = labels[idx]

    def step_fn(model, opt, x, precision):
        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    def fresh(channels_last: bool):
        torch.manual_seed(0)
        model = build(args.arch).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = engine.make_optimizer([model], "sgd", 0.01, 1e-4, nesterov=True)
        return model, opt

    precisions = ["fp32", "bf16"] if bf16 else ["fp32"]
    for precision in precisions:
        for channels_last in (False, True):
            model, opt = fresh(channels_last)
            x = x_aug.contiguous(memory_format=torch.channels_last) if channels_last else x_aug
            name = f"step_{precision}" + ("_channels_last" if channels_last else "")
            emit(name, rate(step_fn(model, opt, x, precision), bs, args.steps))
    best = precisions[-1]
    x_cl = x_aug.contiguous(memory_format=torch.channels_last)
    torch.set_num_threads(1)
    model, opt = fresh(True)
    emit(
        f"step_{best}_channels_last_1_thread", rate(step_fn(model, opt, x_cl, best), bs, args.steps)
    )
    torch.set_num_threads(args.threads)

    if not args.no_compile:
        model, opt = fresh(True)
        compiled = torch.compile(model)
        t0 = time.perf_counter()
        step = step_fn(compiled, opt, x_cl, best)
        step()
        compile_s = time.perf_counter() - t0
        emit(
            "step_compiled",
            rate(step, bs, args.steps),
            precision=best,
            compile_s=round(compile_s, 1),
        )

    model, opt = fresh(True)
    augment = training_augment("standard", spec)

    def train_step():
        x = augment(images[idx], g).contiguous(memory_format=torch.channels_last)
        step_fn(model, opt, x, best)()

    emit("train_step", rate(train_step, bs, args.steps), precision=best)
    model.eval()
    val = images[:512]

    @torch.no_grad()
    def infer():
        x = to_input(val, spec).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=best == "bf16"):
            model(x)

    emit("eval", rate(infer, len(val), max(2, args.steps // 2)), precision=best)

    step_s = 1 / results[f"step_{best}_channels_last"]
    aug_s = 1 / results["augment_standard"]
    summary = {
        "measure": "summary",
        **common,
        "augment_share_of_train_step": round(aug_s / (aug_s + step_s), 3),
        "bf16_over_fp32": round(
            results["step_bf16_channels_last"] / results["step_fp32_channels_last"], 2
        )
        if bf16
        else None,
        "channels_last_over_nchw": round(
            results[f"step_{best}_channels_last"] / results[f"step_{best}"], 2
        ),
        "two_threads_over_one": round(
            results[f"step_{best}_channels_last"] / results[f"step_{best}_channels_last_1_thread"],
            2,
        ),
        "compiled_over_eager": round(
            results["step_compiled"] / results[f"step_{best}_channels_last"], 2
        )
        if "step_compiled" in results
        else None,
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()

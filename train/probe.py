"""Label-efficiency evaluation of a face encoder: linear probe and k-NN on frozen features, and
fine-tuning, each with a class-stratified fraction of the training labels: :func:`probe`, the
library side of ``fer-edge probe``. Hyperparameters are chosen on val (the linear probe's C,
fine-tuning's epoch) and test is scored once with that choice; OUT/results.json and
OUT/results.md hold the table, OUT/finetune_<fraction>/ the resumable fine-tuning runs.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fer_edge import atomic
from fer_edge import bundle as bundle_io
from fer_edge.data import FaceDataset, load_dataset, load_train_val, stratified_subset, write_json
from fer_edge.errors import CheckpointError, InputError
from fer_edge.labels import FER_LABELS
from fer_edge.metrics import classification_report
from fer_edge.preprocess import PreprocessSpec

from . import engine
from .augment import to_input
from .checkpoint import load_checkpoint
from .model_io import MODEL_STATE_KEYS, load_model, model_from_state
from .nets import FaceNet, build
from .predictor import predict_logits
from .supervised import fit, refuse_extra_input_channels

PROTOCOLS = ("linear", "knn", "finetune")
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


def load_encoder(path: str) -> tuple[FaceNet, PreprocessSpec, int | None]:
    """A FaceNet whose backbone comes from a pretrain checkpoint, a training checkpoint or a
    pytorch bundle (its head is unused), and the pretraining epochs behind a pretrain checkpoint
    (None for the others)."""
    p = bundle_io.resolve(path)
    if p.is_dir():
        loaded = load_model(p)
        return loaded.model, loaded.spec, None
    state = load_checkpoint(p, require=())
    if "backbone" in state:
        missing = [k for k in ("arch", "in_channels", "preprocess") if k not in state]
        if missing:
            raise CheckpointError(f"{p} has backbone weights but lacks {', '.join(missing)}")
        refuse_extra_input_channels(state, p)
        model = build(state["arch"], len(FER_LABELS), int(state["in_channels"]))
        try:
            model.backbone.load_state_dict(state["backbone"])
        except RuntimeError as e:
            raise CheckpointError(
                f"{p}: backbone weights do not fit {state['arch']!r}: {str(e)[:300]}"
            ) from None
        epochs = int(state["epoch"]) + 1 if "epoch" in state else None
        return model.eval(), PreprocessSpec.from_dict(state["preprocess"]), epochs
    if all(k in state for k in MODEL_STATE_KEYS):
        return model_from_state(state), PreprocessSpec.from_dict(state["preprocess"]), None
    raise CheckpointError(f"{p} holds neither 'backbone' weights nor a fer-edge model")


@torch.no_grad()
def features(
    model: FaceNet, images: np.ndarray, spec: PreprocessSpec, device: torch.device, batch: int = 512
) -> np.ndarray:
    """Frozen pooled features (N, D) of uint8 faces, network in eval mode."""
    model.eval().to(device)
    out = []
    for i in range(0, len(images), batch):
        x = to_input(torch.from_numpy(images[i : i + batch]).to(device), spec)
        out.append(
            model.embed(x.contiguous(memory_format=torch.channels_last)).float().cpu().numpy()
        )
    return np.concatenate(out) if out else np.zeros((0, model.feat_dim), np.float32)


def knn_scores(
    bank: np.ndarray,
    bank_labels: np.ndarray,
    queries: np.ndarray,
    k: int,
    num_classes: int,
    temperature: float = 0.07,
) -> np.ndarray:
    """Class scores (Nq, K) of a cosine k-NN: each of the k most similar bank features votes for
    its class with weight exp(similarity / temperature) (Wu et al. 2018)."""
    bank_t = torch.nn.functional.normalize(torch.from_numpy(bank), dim=1)
    labels = torch.from_numpy(bank_labels)
    k = min(k, len(bank))
    out = []
    for i in range(0, len(queries), 1024):
        q = torch.nn.functional.normalize(torch.from_numpy(queries[i : i + 1024]), dim=1)
        sims, idx = (q @ bank_t.T).topk(k, dim=1)
        scores = torch.zeros(len(q), num_classes)
        scores.scatter_add_(1, labels[idx], (sims / temperature).exp())
        out.append(scores)
    return torch.cat(out).numpy() if out else np.zeros((0, num_classes), np.float32)


def linear_probe(
    train_f, train_y, val_f, val_y, test_f, num_classes: int
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Multinomial logistic regression on standardised features, C chosen on val; returns
    (val scores, test scores, {"C": chosen})."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_f)
    tr, va, te = scaler.transform(train_f), scaler.transform(val_f), scaler.transform(test_f)
    best = None
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=1000).fit(tr, train_y)
        acc = float((clf.predict(va) == val_y).mean())
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    _, c, clf = best
    return _proba(clf, va, num_classes), _proba(clf, te, num_classes), {"C": c}


def _proba(clf, x: np.ndarray, num_classes: int) -> np.ndarray:
    """Class-probability matrix over all classes, also those absent from a tiny training set."""
    out = np.zeros((len(x), num_classes), np.float32)
    out[:, clf.classes_] = clf.predict_proba(x)
    return out


def finetune(
    *,
    data: str | os.PathLike,
    init: str | os.PathLike | None,
    spec: PreprocessSpec,
    arch: str,
    fraction: float,
    n_train: int,
    out: Path,
    epochs: int,
    batch_size: int,
    lr: float,
    backbone_lr_scale: float,
    head_epochs: int,
    seed: int,
    limit_per_class: int | None,
    device: str,
    threads: int | None,
    progress: bool,
) -> tuple[Path, dict]:
    """Supervised training from the encoder ``init`` (from scratch when None) on a
    class-stratified ``fraction`` of the labels, resumed when it ran before; returns the
    best-on-val bundle and its selection."""
    best = fit(
        data=data,
        arch=arch,
        size=spec.size,
        channels=spec.channels,
        epochs=epochs,
        batch_size=min(batch_size, n_train),
        lr=lr,
        label_fraction=fraction,
        seed=seed,
        init=init,
        # from scratch there is no pretrained backbone to protect
        backbone_lr_scale=backbone_lr_scale if init else 1.0,
        head_epochs=head_epochs if init else 0,
        limit_per_class=limit_per_class,
        out=out / f"finetune_{fraction:g}",
        resume=True,
        device=device,
        threads=threads,
        progress=progress,
    )
    epoch = bundle_io.load_bundle(best).meta.get("metrics", {}).get("val", {}).get("epoch")
    return best, {"epoch": epoch}


def _row(
    protocol,
    fraction,
    n_train,
    selected,
    val: FaceDataset,
    val_scores,
    test: FaceDataset,
    test_scores,
) -> dict:
    v = classification_report(val.labels, val_scores, val.label_names)
    t = classification_report(test.labels, test_scores, test.label_names)
    return {
        "protocol": protocol, "fraction": fraction, "train_faces": int(n_train), "selected": selected,
        "val_accuracy": v["accuracy"], "val_macro_f1": v["macro_f1"],
        "test_accuracy": t["accuracy"], "test_macro_f1": t["macro_f1"],
        "test_macro_precision": t["macro_precision"], "test_macro_recall": t["macro_recall"],
        "test_macro_roc_auc": t["macro_roc_auc"],
    }  # fmt: skip


def markdown(results: dict) -> str:
    lines = [
        f"Encoder: `{results['encoder']}`, data: `{results['data']}`\n",
        "| protocol | labels | train faces | selected on val | val acc | test acc | test macro-F1 "
        "| test macro precision | test macro recall | test macro ROC-AUC |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        sel = ", ".join(f"{k}={v}" for k, v in r["selected"].items()) or "-"
        auc = "-" if r["test_macro_roc_auc"] is None else f"{r['test_macro_roc_auc']:.4f}"
        lines.append(
            f"| {r['protocol']} | {r['fraction']:.0%} | {r['train_faces']} | {sel} | "
            f"{r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | {r['test_macro_f1']:.4f} | "
            f"{r['test_macro_precision']:.4f} | {r['test_macro_recall']:.4f} | {auc} |"
        )
    return "\n".join(lines) + "\n"


def probe_command(*, init, arch, size, channels, **options) -> str:
    """The ``fer-edge probe`` command line that runs :func:`probe` with these arguments (recorded
    in results.json, so every row says how it was made)."""
    words = ["fer-edge", "probe"]
    words += ["--init", str(init)] if init else ["--random", "--arch", arch, "--size", str(size)]
    words += [] if init or channels == 1 else ["--channels", str(channels)]
    for key, value in options.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        values = value if isinstance(value, list | tuple) else [value]
        words += [flag, *(f"{v:g}" if isinstance(v, float) else str(v) for v in values)]
    return " ".join(words)


def probe(
    *,
    data: str | os.PathLike,
    init: str | os.PathLike | None = None,
    arch: str = "vgg",
    size: int = 48,
    channels: int = 1,
    protocols: Sequence[str] = ("linear", "knn"),
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seed: int = 0,
    k: int = 20,
    limit_per_class: int | None = None,
    finetune_epochs: int = 30,
    finetune_batch_size: int = 128,
    finetune_lr: float = 0.05,
    finetune_backbone_lr_scale: float = 1.0,
    finetune_head_epochs: int = 0,
    out: str | os.PathLike = "runs/probe",
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Score the encoder ``init`` (a pretrain or train checkpoint, or a pytorch bundle; None: a
    randomly initialised ``arch`` network at ``size`` and ``channels``, the baseline) with each
    of ``protocols`` at each fraction of the training labels; returns (and writes to OUT) the
    results. The arguments are ``fer-edge probe``'s options (see its ``--help``).
    """
    t0 = time.time()
    device = engine.start(device, threads)
    if any(not 0 < f <= 1 for f in fractions):
        raise InputError(f"--fractions must lie in (0, 1], got {fractions}")
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        raise InputError(
            f"unknown protocol(s) {', '.join(unknown)}; choose from {', '.join(PROTOCOLS)}"
        )
    command = probe_command(
        data=data, init=init, arch=arch, size=size, channels=channels, protocols=protocols,
        fractions=fractions, seed=seed, k=k, limit_per_class=limit_per_class,
        finetune_epochs=finetune_epochs, finetune_batch_size=finetune_batch_size,
        finetune_lr=finetune_lr, finetune_backbone_lr_scale=finetune_backbone_lr_scale,
        finetune_head_epochs=finetune_head_epochs, out=out,
    )  # fmt: skip
    pretrain_epochs = 0
    if init:
        model, spec, pretrain_epochs = load_encoder(init)
    else:
        torch.manual_seed(seed)
        model, spec = (
            build(arch, len(FER_LABELS), channels).eval(),
            PreprocessSpec(size, channels),
        )
    train, val = load_train_val(
        data, spec=spec, seed=seed, limit_per_class=limit_per_class, progress=progress
    )
    test = load_dataset(data, "test", spec=spec)
    num_classes = len(train.label_names)
    results = {
        "encoder": str(init) if init else f"random {model.arch}",
        "arch": model.arch,
        "data": str(data),
        "seed": seed,
        "k": k,
        "pretrain_epochs": pretrain_epochs,
        "command": command,
        "finetune": {
            "epochs": finetune_epochs,
            "lr": finetune_lr,
            "backbone_lr_scale": finetune_backbone_lr_scale if init else 1.0,
            "head_epochs": finetune_head_epochs if init else 0,
        },
        "rows": [],
    }
    needs_features = {"linear", "knn"} & set(protocols)
    picks = {f: stratified_subset(train.labels, f, seed=seed) for f in fractions}
    if needs_features:
        used = np.unique(np.concatenate(list(picks.values())))  # only faces a fraction uses
        feats = {"train": np.zeros((len(train), model.feat_dim), np.float32)}
        feats["train"][used] = features(model, train.images[used], spec, device)
        feats["val"] = features(model, val.images, spec, device)
        feats["test"] = features(model, test.images, spec, device)
    for fraction, pick in picks.items():
        x, y = (feats["train"][pick], train.labels[pick]) if needs_features else (None, None)
        for protocol in protocols:
            if protocol == "linear":
                vs, ts, sel = linear_probe(
                    x, y, feats["val"], val.labels, feats["test"], num_classes
                )
            elif protocol == "knn":
                vs, ts = (knn_scores(x, y, feats[s], k, num_classes) for s in ("val", "test"))
                sel = {"k": min(k, len(x))}
            else:
                best, sel = finetune(
                    data=data,
                    init=init,
                    spec=spec,
                    arch=model.arch,
                    fraction=fraction,
                    n_train=len(pick),
                    out=Path(out),
                    epochs=finetune_epochs,
                    batch_size=finetune_batch_size,
                    lr=finetune_lr,
                    backbone_lr_scale=finetune_backbone_lr_scale,
                    head_epochs=finetune_head_epochs,
                    seed=seed,
                    limit_per_class=limit_per_class,
                    device=str(device),
                    threads=threads,
                    progress=progress,
                )
                tuned = load_model(best).model
                vs, ts = (predict_logits(tuned, ds.images, spec, device) for ds in (val, test))
            row = _row(protocol, fraction, len(pick), sel, val, vs, test, ts)
            results["rows"].append(row)
            print(
                f"{protocol} {fraction:.0%} labels ({len(pick)} faces): val {row['val_accuracy']:.4f} test {row['test_accuracy']:.4f}",
                file=sys.stderr,
                flush=True,
            )
    results["seconds"] = round(time.time() - t0, 1)
    out = Path(out)
    write_json(out / "results.json", results)
    atomic.write_text(out / "results.md", markdown(results))
    print(markdown(results))
    return results

"""Label-efficiency evaluation of a face encoder: linear probe and k-NN on frozen features, and
fine-tuning, each with 1%, 10% and 100% of the training labels.

Label subsets are class-stratified with a fixed seed (``fer_edge.data.stratified_subset``, the
same subset ``fer-edge train --label-fraction`` uses). Hyperparameters are chosen on the val split
(the linear probe's C; fine-tuning's epoch) and the test split is scored once with that choice.
Writes OUT/results.json and OUT/results.md (a markdown table); fine-tuning runs go to
OUT/finetune_<fraction>/ and are resumed, not repeated, when probe runs again.

The encoder is a ``fer-edge pretrain`` checkpoint, a ``fer-edge train`` checkpoint or pytorch
bundle, or (``--random``) a randomly initialised network as the baseline; fine-tuning from
``--random`` is supervised training from scratch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fer_edge import atomic
from fer_edge import bundle as bundle_io
from fer_edge.data import FaceDataset, load_dataset, stratified_subset, write_json
from fer_edge.errors import CheckpointError, InputError
from fer_edge.labels import FER_LABELS
from fer_edge.metrics import classification_report
from fer_edge.preprocess import PreprocessSpec

from . import engine, supervised
from .augment import to_input
from .checkpoint import load_checkpoint
from .model_io import MODEL_STATE_KEYS, load_model, model_from_state
from .nets import ARCHS, FaceNet, build
from .predictor import predict_logits

PROTOCOLS = ("linear", "knn", "finetune")
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--init", help="encoder: fer-edge pretrain/train checkpoint (.pt) or pytorch bundle"
    )
    src.add_argument(
        "--random", action="store_true", help="baseline: a randomly initialised --arch encoder"
    )
    p.add_argument("--arch", default="vgg", choices=sorted(ARCHS), help="architecture for --random")
    p.add_argument("--size", type=int, default=48, help="input side for --random")
    p.add_argument("--channels", type=int, default=1, choices=(1, 3), help="channels for --random")
    p.add_argument("--data", required=True, help="split root with train/, val/ and test/")
    p.add_argument("--protocols", nargs="+", default=["linear", "knn"], choices=PROTOCOLS)
    p.add_argument(
        "--fractions",
        nargs="+",
        type=float,
        default=[0.01, 0.1, 1.0],
        help="fractions of the training labels",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the label subsets (and of --random)"
    )
    p.add_argument("--k", type=int, default=20, help="neighbours for k-NN (cosine similarity)")
    p.add_argument(
        "--limit-per-class",
        type=int,
        help="at most this many training faces per class (quick runs)",
    )
    p.add_argument("--finetune-epochs", type=int, default=30)
    p.add_argument("--finetune-batch-size", type=int, default=128)
    p.add_argument("--finetune-lr", type=float, default=0.05)
    p.add_argument(
        "--out", default="runs/probe", help="folder for results.json, results.md, finetune runs"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--no-progress", action="store_true", help="no progress bars in fine-tuning")


def load_encoder(path: str) -> tuple[FaceNet, PreprocessSpec]:
    """A FaceNet whose backbone comes from a pretrain checkpoint, a training checkpoint or a
    pytorch bundle (its head is unused)."""
    p = bundle_io.resolve(path)
    if p.is_dir():
        loaded = load_model(p)
        return loaded.model, loaded.spec
    state = load_checkpoint(p, require=())
    if "backbone" in state:
        missing = [k for k in ("arch", "in_channels", "preprocess") if k not in state]
        if missing:
            raise CheckpointError(f"{p} has backbone weights but lacks {', '.join(missing)}")
        supervised.refuse_extra_input_channels(state, p)
        model = build(state["arch"], len(FER_LABELS), int(state["in_channels"]))
        try:
            model.backbone.load_state_dict(state["backbone"])
        except RuntimeError as e:
            raise CheckpointError(
                f"{p}: backbone weights do not fit {state['arch']!r}: {str(e)[:300]}"
            ) from None
        return model.eval(), PreprocessSpec.from_dict(state["preprocess"])
    if all(k in state for k in MODEL_STATE_KEYS):
        return model_from_state(state), PreprocessSpec.from_dict(state["preprocess"])
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
    args: argparse.Namespace,
    spec: PreprocessSpec,
    arch: str,
    fraction: float,
    n_train: int,
    device: str,
) -> tuple[Path, dict]:
    """``fer-edge train --init ENCODER --label-fraction F`` (from scratch for --random); returns
    the best-on-val bundle and its selection."""
    parser = argparse.ArgumentParser()
    supervised.add_arguments(parser)
    argv = [
        "--data", args.data, "--arch", arch, "--size", str(spec.size), "--channels", str(spec.channels),
        "--epochs", str(args.finetune_epochs), "--batch-size", str(min(args.finetune_batch_size, n_train)),
        "--lr", str(args.finetune_lr), "--label-fraction", str(fraction), "--seed", str(args.seed),
        "--out", str(Path(args.out) / f"finetune_{fraction:g}"), "--device", device, "--resume",
    ]  # fmt: skip
    argv += ["--init", args.init] if args.init else []
    argv += ["--limit-per-class", str(args.limit_per_class)] if args.limit_per_class else []
    argv += ["--threads", str(args.threads)] if args.threads else []
    argv += ["--no-progress"] if args.no_progress else []
    best = supervised.fit(parser.parse_args(argv))
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


def probe(args: argparse.Namespace) -> dict:
    """Run the protocols; returns (and writes) the results."""
    t0 = time.time()
    engine.set_threads(args.threads)
    device = engine.pick_device(args.device)
    if any(not 0 < f <= 1 for f in args.fractions):
        raise InputError(f"--fractions must lie in (0, 1], got {args.fractions}")
    if args.init:
        model, spec = load_encoder(args.init)
    else:
        torch.manual_seed(args.seed)
        model, spec = (
            build(args.arch, len(FER_LABELS), args.channels).eval(),
            PreprocessSpec(args.size, args.channels),
        )
    split_args = argparse.Namespace(
        data=args.data, train_split="train", val_split="val", val_data=None, no_progress=args.no_progress,
        seed=args.seed, limit_per_class=args.limit_per_class, label_fraction=1.0,
    )  # fmt: skip
    train, val = supervised.load_train_val(split_args, spec)
    test = load_dataset(args.data, "test", spec=spec)
    k = len(train.label_names)
    results = {
        "encoder": args.init or f"random {model.arch}",
        "arch": model.arch,
        "data": args.data,
        "seed": args.seed,
        "k": args.k,
        "rows": [],
    }
    needs_features = {"linear", "knn"} & set(args.protocols)
    picks = {f: stratified_subset(train.labels, f, seed=args.seed) for f in args.fractions}
    if needs_features:
        used = np.unique(np.concatenate(list(picks.values())))  # only faces a fraction uses
        feats = {"train": np.zeros((len(train), model.feat_dim), np.float32)}
        feats["train"][used] = features(model, train.images[used], spec, device)
        feats["val"] = features(model, val.images, spec, device)
        feats["test"] = features(model, test.images, spec, device)
    for fraction, pick in picks.items():
        x, y = (feats["train"][pick], train.labels[pick]) if needs_features else (None, None)
        for protocol in args.protocols:
            if protocol == "linear":
                vs, ts, sel = linear_probe(x, y, feats["val"], val.labels, feats["test"], k)
            elif protocol == "knn":
                vs, ts = (knn_scores(x, y, feats[s], args.k, k) for s in ("val", "test"))
                sel = {"k": min(args.k, len(x))}
            else:
                best, sel = finetune(args, spec, model.arch, fraction, len(pick), str(device))
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
    out = Path(args.out)
    write_json(out / "results.json", results)
    atomic.write_text(out / "results.md", markdown(results))
    print(markdown(results))
    return results


def run(args: argparse.Namespace) -> int:
    probe(args)
    return 0

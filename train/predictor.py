"""PyTorch models in and out of checkpoints and pytorch bundles, and batched inference on
uint8 faces through the shared preprocessing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import torch

from fer_edge import bundle as bundle_io
from fer_edge.errors import CheckpointError
from fer_edge.preprocess import PreprocessSpec

from .augment import to_input
from .checkpoint import load_checkpoint
from .nets import FaceNet, build

MODEL_STATE_KEYS = ("model", "arch", "num_classes", "in_channels", "labels", "preprocess")


def model_from_state(state: dict) -> FaceNet:
    model = build(state["arch"], int(state["num_classes"]), int(state["in_channels"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint weights do not fit architecture {state['arch']!r}: {str(e)[:300]}"
        ) from None
    return model.eval()


def load_torch_model(
    path: str | os.PathLike,
) -> tuple[FaceNet, tuple[str, ...], PreprocessSpec, dict]:
    """Load a FaceNet from a checkpoint file or a pytorch bundle; returns (model, labels, spec, state)."""
    path = Path(bundle_io.resolve(path, pytorch=True))
    if path.is_dir():
        b = bundle_io.load_bundle(path)
        if b.format != "pytorch":
            raise CheckpointError(
                f"{path} is a {b.format} bundle; PyTorch needs a checkpoint or a pytorch bundle"
            )
        path = b.graph
    state = load_checkpoint(path)
    return (
        model_from_state(state),
        tuple(state["labels"]),
        PreprocessSpec.from_dict(state["preprocess"]),
        state,
    )


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    images: np.ndarray,
    spec: PreprocessSpec,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    hflip_tta: bool = False,
) -> np.ndarray:
    """uint8 (N, S, S, C) faces -> float32 (N, K) logits."""
    model.eval()
    device = torch.device(device)
    out = []
    for i in range(0, len(images), batch_size):
        x = to_input(torch.from_numpy(images[i : i + batch_size]).to(device), spec)
        x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x).float()
        if hflip_tta:
            logits = (logits + model(torch.flip(x, dims=[3])).float()) / 2
        out.append(logits.cpu().numpy())
    k = getattr(getattr(model, "head", None), "out_features", 0)
    return np.concatenate(out) if out else np.zeros((0, k), np.float32)


def has_valence_arousal(state: dict) -> bool:
    """Whether a model state's head emits valence and arousal after its class logits."""
    return int(state["num_classes"]) == len(state["labels"]) + 2


def va_meta(state: dict) -> dict:
    """The model.json ``model`` field that tells runtimes about the two extra outputs."""
    return {"valence_arousal": True} if has_valence_arousal(state) else {}


def inference_state(state: dict) -> dict:
    """The part of a training checkpoint a deployed model needs (no optimizer, no history)."""
    return {k: state[k] for k in MODEL_STATE_KEYS}


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def save_pytorch_bundle(
    out: str | os.PathLike, state: dict, *, metrics: dict, source: dict
) -> bundle_io.Bundle:
    """Write ``state`` as a pytorch bundle (model.pt + model.json) atomically."""
    import io

    buf = io.BytesIO()
    torch.save(inference_state(state), buf)
    return bundle_io.save_bundle(
        out,
        {"model.pt": buf.getvalue()},
        labels=state["labels"],
        preprocess=PreprocessSpec.from_dict(state["preprocess"]),
        model={
            "format": "pytorch",
            "file": "model.pt",
            "precision": "fp32",
            "arch": state["arch"],
            **va_meta(state),
        },
        source={"commit": git_commit(), **source},
        metrics=metrics,
    )

"""Batched inference of a PyTorch model on uint8 faces, through the shared preprocessing (the
training-side twin of the SDK's runtimes)."""

from __future__ import annotations

import numpy as np
import torch

from fer_edge.preprocess import PreprocessSpec

from .augment import to_input


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

"""Batched inference of a PyTorch model on uint8 faces, through the shared preprocessing (the
training-side twin of the SDK's runtimes), with optional test-time augmentation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fer_edge.errors import InputError
from fer_edge.preprocess import TTA_MODES, PreprocessSpec

from .augment import to_input

# ten-crop's crops are 7/8 of the side, resized back to the input size: a zoom the training
# augmentation covers (supervised_augment zooms by 0.9-1.1)
TEN_CROP_SIDE = 7 / 8


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views of a normalised NCHW batch whose logits ``mode`` averages."""
    if mode not in TTA_MODES:
        raise InputError(
            f"unknown test-time augmentation {mode!r}; choose from {', '.join(TTA_MODES)}"
        )
    if mode == "none":
        return [x]
    if mode == "flip":
        return [x, x.flip(3)]
    h, w = x.shape[2:]
    ch, cw = round(h * TEN_CROP_SIDE), round(w * TEN_CROP_SIDE)
    tops = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), ((h - ch) // 2, (w - cw) // 2)]
    crops = [
        F.interpolate(
            x[:, :, t : t + ch, s : s + cw], size=(h, w), mode="bilinear", align_corners=False
        )
        for t, s in tops
    ]
    return crops + [c.flip(3) for c in crops]


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    images: np.ndarray,
    spec: PreprocessSpec,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    tta: str = "none",
) -> np.ndarray:
    """uint8 (N, S, S, C) faces -> float32 (N, K) logits (the mean over the ``tta`` views)."""
    model.eval()
    device = torch.device(device)
    out = []
    for i in range(0, len(images), batch_size):
        x = to_input(torch.from_numpy(images[i : i + batch_size]).to(device), spec)
        views = [v.contiguous(memory_format=torch.channels_last) for v in tta_views(x, tta)]
        out.append(torch.stack([model(v).float() for v in views]).mean(0).cpu().numpy())
    k = getattr(getattr(model, "head", None), "out_features", 0)
    return np.concatenate(out) if out else np.zeros((0, k), np.float32)

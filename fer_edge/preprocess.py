"""The one preprocessing path from a face crop to network input.

Training (dataset decoding and the normalisation inside the training loop), export (parity
checks) and the SDK all go through these functions and a :class:`PreprocessSpec` stored in every
model bundle, so a face is turned into numbers the same way everywhere.

Two stages, because training augments between them:
1. :func:`resize_face`: any crop (gray, BGR or BGRA; uint8 or float) -> uint8 ``(S, S, C)``.
2. :func:`normalize`: uint8 ``(N, S, S, C)`` -> float32 ``(N, C, S, S)`` via ``x * scale + offset``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from .errors import InputError

MAX_SIDE = 16384  # larger crops are refused rather than resized for seconds

# Test-time augmentation of PyTorch models (``fer-edge eval --tta``, distillation soft targets):
# "flip" averages the face and its mirror image; "ten-crop" the four corner crops and the centre
# crop and their mirror images (``fer_edge.train.predictor.tta_views``).
TTA_MODES = ("none", "flip", "ten-crop")


@dataclass(frozen=True)
class PreprocessSpec:
    """How a face crop becomes network input; recorded in every bundle's model.json."""

    size: int = 48
    channels: int = 1  # 1: gray; 3: BGR, the channel order OpenCV decodes to
    mean: tuple[float, ...] = (0.5,)  # applied to pixels scaled to [0, 1]
    std: tuple[float, ...] = (0.5,)
    # Fraction of the detector's face box added on each side before cropping, so SDK crops
    # frame a face like the dataset the model was trained on.
    face_margin: float = 0.15
    layout: str = field(default="NCHW")

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise InputError(f"preprocess.channels must be 1 or 3, got {self.channels}")
        if not 8 <= self.size <= 1024:
            raise InputError(f"preprocess.size must be in [8, 1024], got {self.size}")
        if len(self.mean) not in (1, self.channels) or len(self.std) != len(self.mean):
            raise InputError("preprocess.mean/std must have 1 or `channels` entries, equally many")
        # Bounds, not just signs: a NaN, infinite or vanishing entry from a damaged model.json
        # would turn every face into NaN or infinite network input.
        if not all(math.isfinite(m) and abs(m) <= 1e3 for m in self.mean):
            raise InputError(
                f"preprocess.mean entries must be finite, in [-1000, 1000]: {self.mean}"
            )
        if not all(math.isfinite(s) and 1e-6 <= s <= 1e3 for s in self.std):
            raise InputError(f"preprocess.std entries must be in [1e-6, 1000]: {self.std}")
        if not (math.isfinite(self.face_margin) and 0 <= self.face_margin <= 2):
            raise InputError(f"preprocess.face_margin must be in [0, 2], got {self.face_margin}")
        if self.layout != "NCHW":
            raise InputError(f"preprocess.layout must be NCHW, got {self.layout!r}")

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (scale, offset) with normalised = uint8 * scale + offset."""
        mean = np.broadcast_to(np.asarray(self.mean, np.float32), (self.channels,))
        std = np.broadcast_to(np.asarray(self.std, np.float32), (self.channels,))
        return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        try:
            return cls(
                size=int(d["size"]),
                channels=int(d["channels"]),
                mean=tuple(float(v) for v in d["mean"]),
                std=tuple(float(v) for v in d["std"]),
                face_margin=float(d.get("face_margin", 0.15)),
                layout=str(d.get("layout", "NCHW")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"invalid preprocess spec {d!r}: {e}") from None


def as_uint8_image(img: object, what: str = "image") -> np.ndarray:
    """Validate an image and return it as a contiguous uint8 (H, W) or (H, W, C) array.

    Float images are taken as [0, 1] when their maximum is at most 1, else as [0, 255].
    """
    if img is None:
        raise InputError(f"{what} is None")
    if not isinstance(img, np.ndarray):
        raise InputError(f"{what} must be a numpy array, got {type(img).__name__}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise InputError(
            f"{what} must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {img.shape}"
        )
    h, w = img.shape[:2]
    if h == 0 or w == 0:
        raise InputError(f"{what} is empty (shape {img.shape})")
    if h > MAX_SIDE or w > MAX_SIDE:
        raise InputError(f"{what} is {w}x{h}; sides above {MAX_SIDE} px are refused")
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if img.dtype == np.bool_:
        return np.ascontiguousarray(img.astype(np.uint8) * 255)
    if np.issubdtype(img.dtype, np.integer):
        if img.min() < 0 or img.max() > 255:
            raise InputError(f"{what} has integer values outside [0, 255] ({img.dtype})")
        return np.ascontiguousarray(img.astype(np.uint8))
    if np.issubdtype(img.dtype, np.floating):
        if not np.isfinite(img).all():
            raise InputError(f"{what} contains NaN or infinite values")
        # Clip in the frame's own dtype: float64 values beyond float32's range would overflow.
        if img.max() <= 1.0:
            f = np.clip(img, 0.0, 1.0).astype(np.float32) * 255.0
        else:
            f = np.clip(img, 0.0, 255.0).astype(np.float32)
        return np.ascontiguousarray(np.rint(f).astype(np.uint8))
    raise InputError(f"{what} has unsupported dtype {img.dtype}")


def convert_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """uint8 gray/BGR/BGRA -> (H, W, channels) uint8 (gray or BGR)."""
    if channels == 1:
        if img.ndim == 3:
            code = cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY
            img = cv2.cvtColor(img, code)
        return img[:, :, None]
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img


def resize_face(crop: object, spec: PreprocessSpec) -> np.ndarray:
    """Any face crop -> uint8 (size, size, channels)."""
    img = convert_channels(as_uint8_image(crop, "face crop"), spec.channels)
    h, w = img.shape[:2]
    if (h, w) != (spec.size, spec.size):
        shrink = h > spec.size or w > spec.size
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        img = cv2.resize(img, (spec.size, spec.size), interpolation=interp)
    return img.reshape(spec.size, spec.size, spec.channels)


def normalize(batch: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 (N, S, S, C) -> float32 (N, C, S, S)."""
    scale, offset = spec.affine()
    x = batch.astype(np.float32) * scale + offset
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def crop_list(crops: Sequence[object] | np.ndarray, what: str = "face crops") -> list:
    """Face crops as a list: a list or a 4-D (N, H, W, C) array as given, one bare (H, W) or
    (H, W, 1|3|4) array as a list of one. A bare 3-D array whose last axis is not 1, 3 or 4
    could be one channels-first crop (3, H, W), one crop with odd channels, or a stack of gray
    crops: refused, rather than guessed."""
    if isinstance(crops, np.ndarray):
        if crops.ndim == 2 or (crops.ndim == 3 and crops.shape[2] in (1, 3, 4)):
            return [crops]  # one crop passed bare
        if crops.ndim == 3:
            raise InputError(
                f"{what}: a bare array of shape {crops.shape} is ambiguous (a channels-first "
                "crop? a stack of gray crops?); pass one (H, W) or (H, W, 1|3|4) crop, a list of "
                "crops, or an (N, H, W, C) array"
            )
        if crops.ndim < 2:
            raise InputError(f"{what}: expected a list of crops (numpy arrays), got {crops.shape}")
    if crops is None or isinstance(crops, (str, bytes)):
        raise InputError(f"{what}: expected a list of crops (numpy arrays)")
    try:
        return list(crops)
    except TypeError:
        raise InputError(f"{what}: expected a list of crops, got {type(crops).__name__}") from None


def preprocess(crops: Sequence[object] | np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Face crops -> float32 (N, C, S, S) network input."""
    crops = crop_list(crops)
    if not crops:
        return np.zeros((0, spec.channels, spec.size, spec.size), np.float32)
    return normalize(np.stack([resize_face(c, spec) for c in crops]), spec)

"""Batched face augmentation on the training device.

Images stay uint8 (N, H, W, C) on the device; one affine warp per batch (``grid_sample``) does
random resized crop / scale, rotation, translation and flip together, followed by photometric
jitter, optional blur, grayscale and erasing, and finally the bundle's normalisation. The same
code runs on CPU and GPU; randomness comes from an explicit generator so runs are reproducible
and resumable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fer_edge.errors import InputError
from fer_edge.preprocess import PreprocessSpec


def _affine_tensors(
    spec: PreprocessSpec, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    scale, offset = spec.affine()
    shape = (1, spec.channels, 1, 1)
    return (
        torch.from_numpy(scale).to(device).view(shape),
        torch.from_numpy(offset).to(device).view(shape),
    )


def to_input(images: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 (N, S, S, C) -> normalised float32 (N, C, S, S); the torch twin of
    :func:`fer_edge.preprocess.normalize` (same constants, same arithmetic)."""
    scale, offset = _affine_tensors(spec, images.device)
    return images.permute(0, 3, 1, 2).float() * scale + offset


@dataclass
class FaceAugment:
    """Random augmentation parameters; call with uint8 NHWC images and a generator."""

    spec: PreprocessSpec
    flip: float = 0.5  # probability of a horizontal flip
    rotate: float = 10.0  # max degrees either way
    scale: tuple[float, float] = (0.9, 1.1)  # zoom factor range (used when crop_area is None)
    translate: float = 0.1  # max shift as a fraction of the side
    crop_area: tuple[float, float] | None = None  # random-resized-crop area range (SSL)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.2
    contrast: float = 0.2
    blur: float = 0.0  # probability of a Gaussian blur
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # its sigma range, in pixels of the input
    grayscale: float = 0.0  # probability of dropping colour (3-channel models)
    erase: float = 0.0  # probability of erasing one random rectangle
    gamma: float = 0.0  # exposure: x ** exp(u), u uniform in [-gamma, gamma]
    downscale: float = 0.0  # probability of a low-resolution capture (down to 1/2, back up)
    noise: float = 0.0  # max sigma of Gaussian sensor noise, in [0, 1] pixel units

    def _uniform(self, n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
        return torch.rand(n, generator=g) * (hi - lo) + lo

    def _theta(self, n: int, g: torch.Generator) -> torch.Tensor:
        if self.crop_area is not None:
            area = self._uniform(n, *self.crop_area, g)
            log_r = self._uniform(n, math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]), g)
            ratio = torch.exp(log_r)
            cx, cy = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
            tx = (torch.rand(n, generator=g) * 2 - 1) * (1 - cx)
            ty = (torch.rand(n, generator=g) * 2 - 1) * (1 - cy)
        else:
            zoom = self._uniform(n, *self.scale, g)
            cx = cy = 1.0 / zoom
            tx = (torch.rand(n, generator=g) * 2 - 1) * self.translate * 2
            ty = (torch.rand(n, generator=g) * 2 - 1) * self.translate * 2
        angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(self.rotate)
        flip = torch.where(torch.rand(n, generator=g) < self.flip, -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = cos * cx * flip, -sin * cy, tx
        theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sin * cx * flip, cos * cy, ty
        return theta

    def __call__(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """uint8 (N, S, S, C) on any device -> augmented, normalised float (N, C, S, S).

        Channels past the spec's (a landmark heatmap stacked on the face) get the same warp as
        the face but no photometric change, and come back scaled to [0, 1]."""
        n, dev = images.shape[0], images.device
        x = images.permute(0, 3, 1, 2).float() / 255.0
        theta = self._theta(n, g).to(dev)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        x, extra = x[:, : self.spec.channels], x[:, self.spec.channels :]
        per = lambda t: t.to(dev).view(n, 1, 1, 1)  # noqa: E731
        if self.brightness:
            x = x * per(self._uniform(n, 1 - self.brightness, 1 + self.brightness, g))
        if self.contrast:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * per(self._uniform(n, 1 - self.contrast, 1 + self.contrast, g)) + mean
        if self.grayscale and x.shape[1] == 3:
            drop = per((torch.rand(n, generator=g) < self.grayscale).float())
            x = x * (1 - drop) + x.mean(dim=1, keepdim=True) * drop
        if self.gamma:
            u = self._uniform(n, -self.gamma, self.gamma, g)
            x = x.clamp(min=1e-4) ** per(torch.exp(u))
        if self.downscale:
            x = self._downscale(x, g)
        if self.blur:
            x = self._blur(x, g)
        if self.noise:
            sigma = per(self._uniform(n, 0.0, self.noise, g))
            x = x + sigma * torch.randn(x.shape, generator=g).to(dev)
        if self.erase:
            x = self._erase(x, g)
        x = x.clamp(0, 1)
        scale, offset = _affine_tensors(self.spec, dev)
        x = x * (255.0 * scale) + offset
        return torch.cat([x, extra], dim=1) if extra.shape[1] else x

    def _blur(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Separable Gaussian blur, one sigma per image. The kernel reaches 3 sigma of the
        largest sigma (as cv2.GaussianBlur's does): a kernel cut at 3 px made sigma 2 as weak as
        cv2's sigma 1.75, so training never saw the blur the robustness check measures."""
        n, c, h, w = x.shape
        sigma = self._uniform(n, *self.blur_sigma, g).view(n, 1)
        radius = min(math.ceil(3 * self.blur_sigma[1]), h - 1, w - 1)
        taps = 2 * radius + 1
        r = torch.arange(-radius, radius + 1, dtype=torch.float32).view(1, taps)
        k = torch.exp(-(r**2) / (2 * sigma**2))
        k = (k / k.sum(1, keepdim=True)).to(x.device)  # (n, taps): one kernel per image
        flat = x.reshape(1, n * c, h, w)
        kh = k.repeat_interleave(c, 0).view(n * c, 1, 1, taps)
        pad = (radius, radius, 0, 0)
        flat = F.conv2d(F.pad(flat, pad, mode="reflect"), kh, groups=n * c)
        flat = F.conv2d(F.pad(flat, pad[::-1], mode="reflect"), kh.transpose(2, 3), groups=n * c)
        blurred = flat.view_as(x)
        use = (torch.rand(n, generator=g) < self.blur).to(x.device).view(n, 1, 1, 1)
        return torch.where(use, blurred, x)

    def _downscale(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """A face captured at fewer pixels: area-downsampled by one factor per batch (in
        [1/2, 1]) and bilinearly upsampled back, on a random subset of the batch."""
        n, _, h, w = x.shape
        factor = float(self._uniform(1, 0.5, 1.0, g))
        small = F.interpolate(
            x, size=(max(2, round(h * factor)), max(2, round(w * factor))), mode="area"
        )
        low = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
        use = (torch.rand(n, generator=g) < self.downscale).to(x.device).view(n, 1, 1, 1)
        return torch.where(use, low, x)

    def _erase(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        side = self._uniform(n, 0.1, 0.4, g)
        cy, cx = torch.rand(n, generator=g), torch.rand(n, generator=g)
        ys = torch.linspace(0, 1, h).view(1, h, 1)
        xs = torch.linspace(0, 1, w).view(1, 1, w)
        inside = ((ys - cy.view(n, 1, 1)).abs() < side.view(n, 1, 1) / 2) & (
            (xs - cx.view(n, 1, 1)).abs() < side.view(n, 1, 1) / 2
        )
        use = (torch.rand(n, generator=g) < self.erase).view(n, 1, 1)
        mask = (inside & use).unsqueeze(1).to(x.device)
        return torch.where(mask, torch.full_like(x, 0.5), x)


def mix_batch(
    x: torch.Tensor, g: torch.Generator, mixup: float = 0.0, cutmix: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) of a normalised NCHW batch with a
    shuffled copy of itself: returns (mixed batch, partner index of each face, lambda), for the
    loss ``lambda * CE(y) + (1 - lambda) * CE(y[partner])``. lambda ~ Beta(alpha, alpha) of the
    chosen method; with both on, each batch takes one of them at even odds (timm's default).
    CutMix pastes a box of the partner's face covering 1 - lambda of the image (clipped at the
    border, lambda then recomputed from the box). Randomness comes from ``g`` alone, so resumed
    runs mix the same way."""
    n, _, h, w = x.shape
    perm = torch.randperm(n, generator=g)
    use_cutmix = cutmix > 0 and (mixup <= 0 or float(torch.rand(1, generator=g)) < 0.5)
    # torch's Beta sampler takes no generator: a numpy one seeded from g keeps runs reproducible
    rng = np.random.default_rng(int(torch.randint(2**31 - 1, (1,), generator=g)))
    lam = float(rng.beta(*(2 * [cutmix if use_cutmix else mixup])))
    partner = x[perm.to(x.device)]
    if not use_cutmix:
        return lam * x + (1 - lam) * partner, perm, lam
    cut_h, cut_w = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, h)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, w)
    mixed = x.clone()
    mixed[:, :, top:bottom, left:right] = partner[:, :, top:bottom, left:right]
    return mixed, perm, 1 - (bottom - top) * (right - left) / (h * w)


def supervised_augment(spec: PreprocessSpec) -> FaceAugment:
    """Standard FER training augmentation: small affine jitter, flip, light photometric jitter,
    random erasing."""
    return FaceAugment(spec, erase=0.25)


def camera_augment(spec: PreprocessSpec) -> FaceAugment:
    """What other cameras and detectors do to a face (``fer_edge.robustness`` measures the same
    shifts): looser and tighter crops, off-centre boxes, head roll, exposure, low contrast,
    low resolution, blur and sensor noise, on top of the standard flip and erasing. JPEG
    artefacts are left to blur, downscaling and noise, which a batched warp can do on the
    device."""
    return FaceAugment(
        spec,
        rotate=15.0,
        scale=(0.75, 1.15),
        translate=0.15,
        brightness=0.3,
        contrast=0.6,
        gamma=0.7,
        downscale=0.3,
        blur=0.3,
        blur_sigma=(0.1, 2.5),  # past the robustness check's sigma 2 (out of focus, motion)
        noise=0.03,
        erase=0.25,
    )


# --augment: the training augmentations by name
AUGMENTS = {"standard": supervised_augment, "camera": camera_augment}


def training_augment(name: str, spec: PreprocessSpec) -> FaceAugment:
    """The supervised augmentation called ``name`` (a key of :data:`AUGMENTS`)."""
    if name not in AUGMENTS:
        raise InputError(f"unknown augment {name!r}; choose from {', '.join(AUGMENTS)}")
    return AUGMENTS[name](spec)


def ssl_augment(spec: PreprocessSpec) -> FaceAugment:
    """Strong two-view augmentation for self-supervised methods (SimCLR/BYOL style)."""
    return FaceAugment(
        spec,
        crop_area=(0.2, 1.0),
        rotate=15.0,
        brightness=0.4,
        contrast=0.4,
        blur=0.5,
        grayscale=0.2,
    )

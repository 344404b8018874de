"""Face swap by landmarks (Shu et al. 2022's FaceSwap positives): the inner face (brows, eyes,
nose, mouth) of a source face is warped onto a target face's geometry and blended in, so the
result shows the source's expression on the target's face, head and background.

The warp is piecewise affine over a Delaunay triangulation (``scipy.spatial.Delaunay``) of a
subset of the 468 face-mesh points: every target pixel finds its triangle (the triangles are
rasterised with ``cv2.fillConvexPoly``), its barycentric coordinates there give the matching
source position, and one ``cv2.remap`` samples the source. That is exactly a per-triangle affine warp, computed for all triangles at once, which
stays cheap and robust on 48 px crops where most triangles cover a pixel or two. Pixels outside
the triangulation use the least-squares affine map of all points. The blend is a feathered alpha
mask (the convex hull of the inner-face points); ``cv2.seamlessClone`` is unreliable at this size
(its Poisson solve needs a margin around the mask that a 48 px crop does not have), so the
source's tone is instead matched to the target's (mean and standard deviation inside the mask).
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
from scipy.spatial import Delaunay

from fer_edge import atomic
from fer_edge.data import cache_dir
from fer_edge.errors import InputError

from .landmarks import BROWS, EYES, LIPS

# MediaPipe face-mesh indices of the inner face: the parts that carry the expression, and the nose
NOSE = (1, 2, 4, 5, 6, 19, 94, 168, 197, 195, 98, 327, 129, 358)
INNER = BROWS + EYES + NOSE + LIPS
# the face outline, so that the triangulation reaches past the inner face and the feathered edge
OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377)
OVAL += (152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
WARP_POINTS = INNER + OVAL
FEATHER = 0.06  # width of the mask's fade, as a fraction of the side (3 px at 48 px)
CACHE_VERSION = 1


def to_pixels(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Landmarks in [0, 1] of the crop -> pixel-index coordinates (x, y) of an (H, W) image."""
    h, w = shape
    return np.asarray(points, np.float64) * (w, h) - 0.5


def _barycentric(corners: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Barycentric coordinates (..., 3) of ``points`` (..., 2) in triangles ``corners``
    (..., 3, 2), in closed form."""
    a, b = corners[..., 0, :] - corners[..., 2, :], corners[..., 1, :] - corners[..., 2, :]
    d = points - corners[..., 2, :]
    det = a[..., 0] * b[..., 1] - b[..., 0] * a[..., 1]
    det = np.where(np.abs(det) < 1e-12, 1e-12, det)  # a degenerate triangle holds no pixel
    l1 = (d[..., 0] * b[..., 1] - b[..., 0] * d[..., 1]) / det
    l2 = (a[..., 0] * d[..., 1] - d[..., 0] * a[..., 1]) / det
    return np.stack([l1, l2, 1 - l1 - l2], axis=-1)


def pixel_map(src: np.ndarray, dst: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """float32 (H, W, 2): for every pixel of an (H, W) image, the source position (x, y) under
    the piecewise affine map that takes ``dst`` points (pixel coordinates) onto ``src`` points:
    per Delaunay triangle of ``dst``, the affine map fixed by its three corners; outside the
    triangulation the least-squares affine fit of all points."""
    h, w = shape
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    tri = Delaunay(dst)
    corners = dst[tri.simplices]  # (K, 3, 2)
    # Which triangle holds each pixel: rasterised, which is 10-30x faster here than
    # Delaunay.find_simplex (that computes Delaunay.transform, a LAPACK call per triangle). A
    # raster edge can reach a pixel past its triangle; those pixels are looked up exactly.
    label = np.full((h, w), -1, np.int32)
    for k, c in enumerate(np.round(corners * 16).astype(np.int32)):
        cv2.fillConvexPoly(label, c, k, shift=4)  # 4 fractional bits: sub-pixel corners
    ys, xs = np.mgrid[0:h, 0:w]
    query = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    simplex = label.ravel().copy()
    drawn = np.flatnonzero(simplex >= 0)
    bary = _barycentric(corners[simplex[drawn]], query[drawn])
    stray = drawn[bary.min(1) < -1e-6]
    if len(stray):  # mostly one pixel past an edge: the neighbour across it holds the pixel
        near = tri.neighbors[simplex[stray]]  # (S, 3), -1 past the hull
        fit = _barycentric(corners[near], query[stray, None]).min(2)  # (S, 3)
        fit[near < 0] = -np.inf
        simplex[stray] = np.where(
            fit.max(1) >= -1e-6, near[np.arange(len(near)), fit.argmax(1)], -1
        )
        rest = stray[fit.max(1) < -1e-6]
        if len(rest):
            every = _barycentric(corners[None], query[rest, None]).min(2)  # (R, K)
            simplex[rest] = np.where(every.max(1) >= -1e-6, every.argmax(1), -1)
    out = np.empty_like(query)
    inside = simplex >= 0
    bary = _barycentric(corners[simplex[inside]], query[inside])
    out[inside] = np.einsum("mk,mkd->md", bary, src[tri.simplices[simplex[inside]]])
    if (~inside).any():
        affine, *_ = np.linalg.lstsq(np.c_[dst, np.ones(len(dst))], src, rcond=None)  # (3, 2)
        out[~inside] = np.c_[query[~inside], np.ones((~inside).sum())] @ affine
    return out.reshape(h, w, 2).astype(np.float32)


def warp_face(
    source: np.ndarray, source_points: np.ndarray, target_points: np.ndarray, shape: tuple
) -> np.ndarray:
    """``source`` (H, W[, C]) warped so that its landmarks land on ``target_points`` in an image
    of ``shape`` (H, W); points in [0, 1] as :mod:`landmarks` gives them."""
    h, w = shape[:2]
    sel = list(WARP_POINTS)
    src = to_pixels(source_points[sel], source.shape[:2])
    dst = to_pixels(target_points[sel], (h, w))
    mapped = pixel_map(src, dst, (h, w))
    warped = cv2.remap(
        source, mapped[..., 0], mapped[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return warped.reshape(h, w, *source.shape[2:])


def inner_face_mask(points: np.ndarray, shape: tuple) -> np.ndarray:
    """float32 (H, W) alpha: 0 outside the convex hull of the inner-face points, rising linearly
    with the distance from its edge to 1 at :data:`FEATHER` of the side inside (the fade stays
    inside the hull, so the target's hair and background are never touched)."""
    h, w = shape[:2]
    hull = cv2.convexHull(np.round(to_pixels(points[list(INNER)], (h, w))).astype(np.int32))
    mask = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(mask, hull, 255)
    inside = cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.clip(inside / max(FEATHER * max(h, w), 1.0), 0, 1).astype(np.float32)


def match_tone(warped: np.ndarray, target: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``warped`` with its mean and standard deviation inside the mask set to ``target``'s,
    per channel (a source lit differently from the target would otherwise leave a seam)."""
    weight = (alpha > 0.5)[..., None]
    n = max(int(weight.sum()), 1)
    a, b = warped.astype(np.float32), target.astype(np.float32)
    mean_a, mean_b = (a * weight).sum((0, 1)) / n, (b * weight).sum((0, 1)) / n
    std_a = np.sqrt((((a - mean_a) * weight) ** 2).sum((0, 1)) / n) + 1e-3
    std_b = np.sqrt((((b - mean_b) * weight) ** 2).sum((0, 1)) / n)
    gain = np.clip(std_b / std_a, 0.5, 2.0)  # bounded: a flat crop must not be blown up
    return (a - mean_a) * gain + mean_b


def swap_face(
    source: np.ndarray,
    source_points: np.ndarray,
    target: np.ndarray,
    target_points: np.ndarray,
    tone: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The inner face of ``source`` on ``target``: returns (uint8 image shaped like ``target``,
    float32 (H, W) alpha that was used: 1 = source, 0 = target). Images (H, W, C) uint8,
    points (468, 2) in [0, 1]."""
    if source.ndim != 3 or target.ndim != 3 or source.shape[2] != target.shape[2]:
        raise InputError(
            f"face swap wants two (H, W, C) images with equal C, got {source.shape} and {target.shape}"
        )
    warped = warp_face(source, source_points, target_points, target.shape[:2])
    alpha = inner_face_mask(target_points, target.shape[:2])
    inner = match_tone(warped, target, alpha) if tone else warped.astype(np.float32)
    a = alpha[..., None]
    out = a * inner + (1 - a) * target.astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8), alpha


def swap_pairs(n: int, seed: int) -> np.ndarray:
    """For each face i a partner j != i (uniform, seeded): face i's expression goes onto j."""
    if n < 2:
        raise InputError(f"face swapping needs at least 2 faces, got {n}")
    rng = np.random.default_rng(seed)
    return (np.arange(n) + rng.integers(1, n, size=n)) % n


def swap_dataset(
    images: np.ndarray, points: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Face i's inner face swapped onto face ``partner[i]``, for every face: returns (swapped
    uint8 like ``images``, partner indices). Computed once per (images, seed) and cached by
    content beside the landmarks."""
    partner = swap_pairs(len(images), seed)
    key = hashlib.sha256(images.tobytes())
    key.update(f"|{seed}|{CACHE_VERSION}".encode())
    path = cache_dir() / f"faceswap-{key.hexdigest()[:20]}.npy"
    if path.is_file():
        cached = np.load(path, allow_pickle=False)
        if cached.shape == images.shape and cached.dtype == np.uint8:
            return cached, partner
    out = np.empty_like(images)
    for i, j in enumerate(partner):
        out[i] = swap_face(images[i], points[i], images[j], points[j])[0]
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, out, allow_pickle=False)
    return out, partner

"""Shu et al. strategies: the face swap keeps the source's inner face and the target's outside,
the clip reader reads clip trees and refuses bad ones, temporal samplers pick the frames they
promise, MaskFN masks exactly the most similar negative, and each strategy learns."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial import Delaunay
from train_helpers import command_options

pytest.importorskip("ai_edge_litert")

from fer_edge.data import load_dataset  # noqa: E402
from fer_edge.errors import DatasetError, InputError  # noqa: E402
from fer_edge.preprocess import PreprocessSpec  # noqa: E402
from fer_edge.train import clips, faceswap, landmarks, pretrain  # noqa: E402
from fer_edge.train.methods import shu, simclr  # noqa: E402

SPEC = PreprocessSpec(size=48, channels=1)


@pytest.fixture(scope="module")
def faces(small_fer_dir):
    """Real FER-2013 val faces (48 px gray) and their landmarks."""
    images = load_dataset(small_fer_dir, "val", spec=SPEC).images[:24]
    points, scores = landmarks.FaceLandmarker(num_threads=1)(images)
    keep = scores > 0.5
    return images[keep], points[keep]


def test_face_swap_keeps_source_inside_and_target_outside(faces):
    images, points = faces
    for i, j in [(0, 1), (2, 3), (4, 5), (6, 7)]:
        src, tgt = images[i], images[j]
        out, alpha = faceswap.swap_face(src, points[i], tgt, points[j], tone=False)
        warped = faceswap.warp_face(src, points[i], points[j], tgt.shape[:2])
        inside, outside = alpha > 0.999, alpha == 0
        assert 0.1 < inside.mean() < 0.7 and outside.mean() > 0.2
        diff = np.abs(out.astype(int) - warped.astype(int))[..., 0]
        assert diff[inside].max() <= 1  # the warped source, up to rounding
        assert np.array_equal(out[outside], tgt[outside])
        assert np.abs(out.astype(int) - tgt.astype(int))[..., 0][inside].mean() > 5  # it changed
        # eyes and mouth of the target geometry are inside the swapped region
        for c in landmarks.region_centres(points[j : j + 1]).values():
            x, y = faceswap.to_pixels(c[0], tgt.shape[:2]).round().astype(int)
            assert alpha[y, x] > 0.999
        # with tone matching the inside is an affine copy of the warped source
        toned, alpha2 = faceswap.swap_face(src, points[i], tgt, points[j])
        corr = np.corrcoef(toned[..., 0][inside], warped[..., 0][inside])[0, 1]
        assert corr > 0.98 and np.array_equal(toned[outside], tgt[outside])


def test_triangle_warp_maps_landmarks_onto_landmarks(faces):
    _, points = faces
    src = faceswap.to_pixels(points[0][list(faceswap.WARP_POINTS)], (96, 96))
    dst = faceswap.to_pixels(points[1][list(faceswap.WARP_POINTS)], (96, 96))
    mapped = faceswap.pixel_map(src, dst, (96, 96))
    # each pixel in a triangle moves by that triangle's affine map (cv2's, from its corners)
    tri = Delaunay(dst)
    grid = np.stack(np.meshgrid(np.arange(96), np.arange(96)), -1).reshape(-1, 2).astype(float)
    simplex = tri.find_simplex(grid)
    checked = 0
    for q, k in zip(grid, simplex, strict=True):
        if k < 0:
            continue
        t = tri.transform[k]
        bary = t[:2] @ (q - t[2])
        if min(*bary, 1 - bary.sum()) < 1e-6:
            continue  # on an edge either neighbour's map may be used (they agree there)
        m = cv2.getAffineTransform(
            dst[tri.simplices[k]].astype(np.float32), src[tri.simplices[k]].astype(np.float32)
        )
        np.testing.assert_allclose(mapped[int(q[1]), int(q[0])], m @ [*q, 1], atol=1e-3)
        checked += 1
    assert checked > 2000
    # on pixels: bright dots at a few source landmarks appear at the target's landmarks
    picks = [33, 263, 61, 291, 1]
    canvas = np.zeros((96, 96, 1), np.uint8)
    for k in picks:
        x, y = faceswap.to_pixels(points[0][k], (96, 96)).round().astype(int)
        cv2.circle(canvas, (x, y), 1, 255, -1)
    warped = faceswap.warp_face(canvas, points[0], points[1], (96, 96))[..., 0]
    for k in picks:
        x, y = faceswap.to_pixels(points[1][k], (96, 96))
        xi, yi = int(round(x)), int(round(y))
        patch = warped[yi - 2 : yi + 3, xi - 2 : xi + 3]
        assert patch.max() > 100, f"landmark {k} did not land at ({x:.1f}, {y:.1f})"


def test_swap_dataset_pairs_and_cache(faces, monkeypatch):
    images, points = faces
    swapped, partner = faceswap.swap_dataset(images, points, seed=3)
    assert swapped.shape == images.shape and not np.any(partner == np.arange(len(images)))
    np.testing.assert_array_equal(
        swapped[2],
        faceswap.swap_face(images[2], points[2], images[partner[2]], points[partner[2]])[0],
    )
    monkeypatch.setattr(faceswap, "swap_face", lambda *a, **k: pytest.fail("not cached"))
    again, _ = faceswap.swap_dataset(images, points, seed=3)
    np.testing.assert_array_equal(again, swapped)
    assert not np.array_equal(faceswap.swap_pairs(len(images), 4), partner)


def test_clip_reader_reads_a_clip_tree(faces, tmp_path):
    images, points = faces
    rng = np.random.default_rng(0)
    made = [clips.synthesize_clip(images[k], images[k + 1], 5, rng) for k in range(3)]
    root = clips.write_clip_tree(tmp_path / "tree", made, ["ann", "bob", "ann"])
    ds = load_dataset(root, spec=SPEC)
    np.testing.assert_array_equal(ds.images, np.concatenate(made))  # PNG frames, in order
    np.testing.assert_array_equal(ds.clip, np.repeat([0, 1, 2], 5))
    np.testing.assert_array_equal(ds.frame, np.tile(np.arange(5), 3))
    np.testing.assert_array_equal(ds.identity, np.repeat([0, 1, 0], 5))
    assert (ds.labels == -1).all()
    sub = ds.subset(np.array([14, 0, 7]))
    assert sub.clip.tolist() == [2, 0, 1] and sub.frame.tolist() == [4, 0, 2]
    # numeric frame names are ordered by value, not as text
    clip = tmp_path / "num" / "c"
    clip.mkdir(parents=True)
    for n in (10, 2, 1):
        cv2.imwrite(str(clip / f"{n}.png"), np.full((48, 48), n, np.uint8))
    (tmp_path / "num" / "clips.csv").write_text("clip,identity,label\nc,x,happy\n")
    ds = load_dataset(tmp_path / "num", spec=SPEC)
    assert ds.images[:, 0, 0, 0].tolist() == [1, 2, 10] and ds.label_names[ds.labels[0]] == "happy"


def test_clip_reader_refuses_bad_layouts(tmp_path):
    root = tmp_path / "bad"
    (root / "a").mkdir(parents=True)
    cv2.imwrite(str(root / "a" / "0.png"), np.zeros((48, 48), np.uint8))
    (root / "empty").mkdir()
    cases = {
        "clip,person\na,x\n": "'clip' and 'identity' columns",
        "clip,identity\nmissing,x\n": "'missing' is not a folder",
        "clip,identity\nempty,x\n": "holds no images",
        "clip,identity\na,x\na,y\n": "listed twice",
        "clip,identity\n../bad/a,x\n../../etc,x\n": "not a folder in",
        "clip,identity\na,\n": "empty clip or identity",
        "clip,identity\n": "lists no clips",
    }
    for text, message in cases.items():
        (root / "clips.csv").write_text(text)
        with pytest.raises(DatasetError, match=message):
            load_dataset(root, spec=SPEC)
    (root / "clips.csv").write_text("clip,identity\na,x\n")
    with pytest.raises(DatasetError, match="not splits"):
        load_dataset(root, "train", spec=SPEC)


def test_temporal_samplers_pick_near_partners_and_far_same_identity_negatives():
    # clips of lengths 1..12 over 3 identities, frames with a gap, in shuffled order
    clip, frame, ident = [], [], []
    for c, length in enumerate([12, 1, 7, 10, 3, 12]):
        clip += [c] * length
        frame += [f for f in range(length + 1) if f != 2][:length]
        ident += [c % 3] * length
    perm = np.random.default_rng(0).permutation(len(clip))
    clip, frame, ident = (np.array(a)[perm] for a in (clip, frame, ident))
    window, gap, n = 3, 6, len(clip)
    near = shu.NearbyFrames(clip, frame, window)
    far = shu.DistantSameIdentity(ident, clip, frame, gap)
    g = torch.Generator().manual_seed(0)
    idx = torch.arange(n).repeat(200)
    p, h = near(idx, g).numpy(), far(idx, g).numpy()
    i = idx.numpy()
    alone = clip[i] == 1  # the one-frame clip
    assert (p[alone] == i[alone]).all()
    ok = (clip[p] == clip[i]) & (np.abs(frame[p] - frame[i]) <= window) & (p != i)
    assert ok[~alone].all()
    for k in range(n):  # every frame in reach is drawn, nothing else
        reach = np.flatnonzero(
            (clip == clip[k]) & (np.abs(frame - frame[k]) <= window) & (np.arange(n) != k)
        )
        assert set(p[i == k]) == set(reach) or (clip[k] == 1 and set(p[i == k]) == {k})
    hard = (ident[h] == ident[i]) & ((clip[h] != clip[i]) | (np.abs(frame[h] - frame[i]) >= gap))
    none = np.array([
        not ((ident == ident[k]) & ((clip != clip[k]) | (np.abs(frame - frame[k]) >= gap))).any()
        for k in range(n)
    ])  # fmt: skip
    assert far.without == none.sum()
    assert hard[~none[i]].all()
    for k in np.flatnonzero(~none)[:10]:
        allowed = (ident == ident[k]) & ((clip != clip[k]) | (np.abs(frame - frame[k]) >= gap))
        assert set(h[i == k]) == set(np.flatnonzero(allowed))


def test_maskfn_masks_exactly_the_most_similar_negative():
    b, t = 5, 0.5
    gen = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(b, 8, generator=gen), torch.randn(b, 8, generator=gen)
    e = torch.eye(b)
    # 0 and 2 are near twins, 3 leans to 0, 1 and 4 share a part: most similar other face of
    # 0, 1, 2, 3, 4 is 2, 4, 0, 0, 1
    descriptors = torch.stack([e[0], e[1], 0.9 * e[0] + 0.2 * e[2], 0.8 * e[0] + 0.6 * e[3], 0.7 * e[1] + e[4]])  # fmt: skip
    expected = [2, 4, 0, 0, 1]
    assert shu.most_similar_other(descriptors).tolist() == expected
    loss = shu.contrastive_loss(z1, z2, t, descriptors)
    a = F.normalize(torch.cat([z1, z2]), dim=1)
    total = 0.0
    for r in range(2 * b):
        k = r % b
        pos = (r + b) % (2 * b)
        cols = [c for c in range(2 * b) if c != r and c % b != expected[k]]
        logits = a[r] @ a[cols].T / t
        total += -(logits[cols.index(pos)] - torch.logsumexp(logits, 0))
    torch.testing.assert_close(loss, total / (2 * b))
    # no descriptors, no extras: exactly SimCLR's NT-Xent; extras add to every denominator
    torch.testing.assert_close(shu.contrastive_loss(z1, z2, t), simclr.nt_xent(z1, z2, t))
    extra = torch.randn(b, 8, generator=gen)
    e = F.normalize(extra, dim=1)
    manual = torch.stack([
        -(a[r] @ a[(r + b) % (2 * b)] / t)
        + torch.logsumexp(torch.cat([a[r] @ a[[c for c in range(2 * b) if c != r]].T, a[r] @ e.T]) / t, 0)
        for r in range(2 * b)
    ]).mean()  # fmt: skip
    torch.testing.assert_close(shu.contrastive_loss(z1, z2, t, extra=extra), manual)


def test_mouth_eye_descriptors_find_the_same_face(faces, tmp_path):
    images, points = faces
    n = len(images)
    # small enough for a random-weight backbone to keep each face nearest its copy (checked over
    # 10 seeds; +12 failed for some)
    brighter = np.clip(images.astype(int) + 6, 0, 255).astype(np.uint8)
    both, twice = np.concatenate([images, brighter]), np.concatenate([points, points])
    d = shu.mouth_eye_descriptors(both, twice)
    half = d.shape[1] // 2
    np.testing.assert_allclose(np.linalg.norm(d[:, :half], axis=1), 1, atol=1e-4)
    # each face's most similar other face is its own brighter copy
    expected = np.r_[np.arange(n) + n, np.arange(n)]
    assert shu.most_similar_other(torch.from_numpy(d)).tolist() == expected.tolist()
    # the same through a checkpoint's frozen backbone (extractor=PATH)
    torch.manual_seed(0)  # the weights must not depend on which tests ran before
    encoder = shu.Encoder("vgg_small", 1)
    torch.save(
        {
            "backbone": encoder.backbone.state_dict(),
            "arch": "vgg_small",
            "in_channels": 1,
            "preprocess": PreprocessSpec(size=24, channels=1).to_dict(),
        },
        tmp_path / "ckpt.pt",
    )
    d = shu.mouth_eye_descriptors(both, twice, str(tmp_path / "ckpt.pt"))
    assert d.shape == (2 * n, 2 * encoder.out_dim)
    assert shu.most_similar_other(torch.from_numpy(d)).tolist() == expected.tolist()


def test_prepare_refuses_temporal_strategies_on_stills(small_fer_dir):
    ds = load_dataset(small_fer_dir, "val", spec=SPEC)
    cfg = {**shu.DEFAULTS, "faceswap": False, "maskfn": False, "timeaug": True}
    with pytest.raises(InputError, match="clip dataset"):
        shu.prepare(ds, cfg, SPEC)
    with pytest.raises(InputError, match="swap_prob in"):
        shu.prepare(ds, {**shu.DEFAULTS, "swap_prob": 1.5}, SPEC)


@pytest.fixture(scope="module")
def clip_tree(faces, tmp_path_factory):
    """Clips synthesised from real stills: 16 identities, 12 frames each, changing expression."""
    images, points = faces
    return clips.synthesize_tree(tmp_path_factory.mktemp("clips") / "tree", images[:16], 12, points)


def run_losses(data, out, method, *settings) -> list[float]:
    args = command_options("pretrain", [
        "--method", method, "--data", str(data), "--out", str(out), "--arch", "vgg_small",
        "--size", "24", "--batch-size", "32", "--limit", "96", "--warmup-epochs", "0.5",
        "--epochs", "8", "--threads", "1", "--no-progress", "--set", "hidden=256",
        *[x for s in settings for x in ("--set", s)],
    ])  # fmt: skip
    pretrain.fit(**args)
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "method,settings",
    [
        ("shu", ("maskfn=false",)),  # FaceSwap
        ("shu", ("faceswap=false",)),  # MaskFN
        ("shu-temporal", ("maskfn=false", "hardneg=false", "window=2")),  # TimeAug
        ("shu-temporal", ("maskfn=false", "timeaug=false", "min_gap=8")),  # HardNeg
    ],
    ids=["faceswap", "maskfn", "timeaug", "hardneg"],
)
def test_loss_falls_for_each_strategy(small_fer_dir, clip_tree, tmp_path, method, settings):
    data = clip_tree if method == "shu-temporal" else small_fer_dir
    curve = run_losses(data, tmp_path / "run", method, *settings)
    assert len(curve) == 8 and all(np.isfinite(curve))
    # epoch 1 holds the warm-up from random weights; compare the last two with epochs 2-3
    assert np.mean(curve[-2:]) < np.mean(curve[1:3]), f"{method} {settings}: no fall: {curve}"

"""HNCL: heatmaps peak at the landmarks, the neighbour positives are the heatmap-nearest queue
entries, the loss falls on real faces, the checkpoint initialises fine-tuning, and a gray +
heatmap encoder moves both channels together and is refused where only faces are fed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from train_helpers import command_options

pytest.importorskip("ai_edge_litert")

from fer_edge.cli import main  # noqa: E402
from fer_edge.data import load_dataset  # noqa: E402
from fer_edge.preprocess import PreprocessSpec  # noqa: E402
from fer_edge.train import methods, pretrain  # noqa: E402
from fer_edge.train.augment import FaceAugment  # noqa: E402
from fer_edge.train.checkpoint import load_checkpoint  # noqa: E402
from fer_edge.train.landmarks import dataset_landmarks  # noqa: E402
from fer_edge.train.methods import hncl  # noqa: E402
from fer_edge.train.nets import build  # noqa: E402
from fer_edge.train.supervised import init_from  # noqa: E402

SIZE = 24


def pretrain_args(data, out, *extra: str) -> dict:
    return command_options("pretrain", [
        "--method", "hncl", "--data", str(data), "--out", str(out), "--arch", "vgg_small",
        "--size", str(SIZE), "--batch-size", "32", "--limit", "160", "--warmup-epochs", "0.5",
        "--threads", "1", "--no-progress", "--set", "hidden=256", "--set", "queue=64", *extra,
    ])  # fmt: skip


@pytest.fixture(scope="module")
def val_faces(small_fer_dir):
    """24 real 48 px faces and their HNCL landmark subset (N, P, 2)."""
    ds = load_dataset(small_fer_dir, "val", spec=PreprocessSpec(size=48))
    ds = ds.subset(np.arange(24))
    return ds, dataset_landmarks(ds.images)[:, list(hncl.POINTS)]


def test_heatmaps_peak_at_the_landmarks(val_faces):
    _, points = val_faces
    side, sigma = 24, 1.0
    maps = hncl.heatmaps(points, side, sigma)
    assert maps.shape == (len(points), side, side) and maps.max() <= 1.0
    pixel = np.floor(points * side).astype(int)  # (N, P, 2) as (x, y)
    inside = ((pixel >= 0) & (pixel < side)).all(-1)
    n, p = np.nonzero(inside)
    # the pixel holding a landmark is at most sqrt(0.5) px from it: value >= exp(-0.5 / 2 sigma^2)
    at_landmarks = maps[n, pixel[n, p, 1], pixel[n, p, 0]]
    assert at_landmarks.min() >= np.exp(-0.25) - 1e-6
    # one landmark alone peaks exactly at its pixel
    for face, point in ((0, 0), (3, 57), (7, len(hncl.POINTS) - 1)):
        single = hncl.heatmaps(points[face : face + 1, point : point + 1], side, sigma)[0]
        assert np.unravel_index(single.argmax(), single.shape) == tuple(pixel[face, point, ::-1])
    # pixels more than 4 sigma from every landmark are dark
    centres = (np.arange(side) + 0.5) / side
    grid = np.stack(np.meshgrid(centres, centres), -1).reshape(-1, 2)  # (side^2, (x, y))
    dist = np.linalg.norm(grid[None, :, None] - points[:, None], axis=-1).min(-1) * side
    far = dist > 4 * sigma
    assert far.any() and maps.reshape(len(points), -1)[far].max() < np.exp(-8) + 1e-6


def test_heatmap_channel_moves_with_the_face(val_faces):
    ds, points = val_faces
    faces, spec = ds.images, PreprocessSpec(size=48)
    cfg = methods.config("hncl", {"heatmap_channel": "true"})
    views = hncl.prepare(ds, cfg, spec)
    stack = views.images
    assert stack.shape == (*faces.shape[:3], 2) and stack.dtype == np.uint8
    np.testing.assert_array_equal(stack[..., 0], faces[..., 0])
    pixel = np.floor(points * spec.size).astype(int)
    n, p = np.nonzero(((pixel >= 0) & (pixel < spec.size)).all(-1))  # landmarks inside the crop
    lit = stack[n, pixel[n, p, 1], pixel[n, p, 0], 1]
    assert len(n) > 0.9 * points[..., 0].size and lit.min() >= 255 * np.exp(-0.25) - 1
    # a flip with strong photometric jitter: the heatmap flips with the face, unchanged in value
    flip = FaceAugment(spec, flip=1.0, rotate=0, scale=(1, 1), translate=0, brightness=0.4)
    out = flip(torch.from_numpy(stack), torch.Generator().manual_seed(0))
    assert out.shape == (len(faces), 2, spec.size, spec.size)
    expected = torch.from_numpy(stack[..., 1]).flip(-1).float() / 255
    torch.testing.assert_close(out[:, 1], expected, atol=1e-4, rtol=0)
    assert not torch.allclose(
        out[:, 0], torch.from_numpy(faces[..., 0]).flip(-1).float() / 127.5 - 1
    )
    # the encoder is built for 2 channels
    model = methods.build("hncl", "vgg_small", 1, {**cfg, "hidden": 64})
    assert model.encoder.backbone.body[0][0].in_channels == 2


def _shifted_queue(points: np.ndarray, order: np.ndarray, side: int):
    """Heatmaps of one face shifted right by order[i] / 2 pixels: the larger the shift, the less
    similar to the unshifted face, so the nearest entries are known."""
    shifted = points[None] + np.stack([order / (2 * side), np.zeros_like(order)], -1)[:, None]
    maps = hncl.heatmaps(shifted.astype(np.float32), side, 1.0)
    return F.normalize(torch.from_numpy(maps).flatten(1), dim=1)


def test_neighbour_positives_are_the_heatmap_nearest_queue_entries(val_faces):
    _, points = val_faces
    cfg = methods.config("hncl", {"hidden": "64", "dim": "32", "queue": "16", "neighbours": "4"})
    model = methods.build("hncl", "vgg_small", 1, cfg).eval()
    torch.manual_seed(0)
    shift = np.random.default_rng(0).permutation(12).astype(np.float32)  # 12 of 16 slots filled
    heat = _shifted_queue(points[0], shift, cfg["heatmap_side"])
    model._enqueue(F.normalize(torch.randn(12, 32), dim=1), heat)
    # the 4 empty slots hold the query's own heatmap: picking one would be a masking bug
    query = _shifted_queue(points[0], np.zeros(1, np.float32), cfg["heatmap_side"])
    model.queue_heatmaps[12:] = query
    slots, similarity = model.neighbours(query)
    nearest = set(np.argsort(shift)[:4].tolist())  # shifts 0, 0.5, 1, 1.5 px
    assert set(slots[0].tolist()) == nearest
    assert torch.all(similarity[0, :-1] >= similarity[0, 1:]) and similarity[0, 0] > 0.999

    # the loss is the mean -log p over (own key, those 4 entries) under MoCo's softmax
    x1, x2 = torch.randn(1, 1, SIZE, SIZE), torch.randn(1, 1, SIZE, SIZE)
    out = model(x1, x2, heatmap=query)

    def nll(x_query, x_key, positives):
        q = F.normalize(model.predictor(model.projector(model.encoder(x_query))), dim=1)
        k = F.normalize(model.key_projector(model.key_encoder(x_key)), dim=1)
        sims = torch.cat([(q * k).sum(1), q[0] @ model.queue[:12].T]) / cfg["temperature"]
        log_p = sims.log_softmax(0)
        return -torch.stack([log_p[0], *(log_p[1 + s] for s in positives)]).mean()

    with torch.no_grad():
        expected = (nll(x1, x2, sorted(nearest)) + nll(x2, x1, sorted(nearest))) / 2
        farthest = (nll(x1, x2, np.argsort(shift)[-4:]) + nll(x2, x1, np.argsort(shift)[-4:])) / 2
    torch.testing.assert_close(out["loss"], expected, atol=1e-5, rtol=1e-5)
    assert not torch.isclose(out["loss"], farthest, atol=1e-4)

    # neighbour_weight w: each neighbour counts w times the own key in the mean
    with torch.no_grad():
        own = (nll(x1, x2, []) + nll(x2, x1, [])) / 2
        near = (expected * 5 - own) / 4  # expected is the plain mean over own + 4 neighbours
        model.cfg["neighbour_weight"] = 0.25
        weighted = model(x1, x2, heatmap=query)["loss"]
    torch.testing.assert_close(weighted, (own + 0.25 * 4 * near) / 2, atol=1e-5, rtol=1e-5)
    assert int(model.queue_filled) == 12  # eval mode: nothing enqueued


def test_loss_falls_and_checkpoint_initialises_fine_tuning(small_fer_dir, tmp_path):
    run = tmp_path / "hncl"
    model = pretrain.fit(**pretrain_args(small_fer_dir, run, "--epochs", "4", "--lr", "1.0"))
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    curve = [h["loss"] for h in history]
    assert len(curve) == 4 and all(np.isfinite(curve))
    # epoch 1 holds the warm-up and the first step's empty queue, so compare with epoch 2
    assert curve[-1] < curve[1], f"hncl loss did not fall: {curve}"
    assert all(0 < h["neighbour_similarity"] <= 1 for h in history[1:])
    state = load_checkpoint(run / "last.pt", require=("backbone", "in_channels", "method"))
    assert state["method"] == "hncl" and state["in_channels"] == 1
    assert state["model"]["queue_heatmaps"].abs().sum() > 0

    net = build("vgg_small")
    assert init_from(net, str(run / "last.pt")) == len(net.backbone.state_dict())
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(net.backbone.state_dict()[k], v)
    ft = tmp_path / "ft"
    code = main([
        "train", "--data", str(small_fer_dir), "--arch", "vgg_small", "--size", str(SIZE),
        "--epochs", "1", "--batch-size", "32", "--init", str(run / "last.pt"),
        "--out", str(ft), "--threads", "1", "--no-progress",
    ])  # fmt: skip
    assert code == 0 and (ft / "best" / "model.json").is_file()


def test_classifier_metrics_and_two_channel_checkpoint_refused(small_fer_dir, tmp_path, capsys):
    # eval reports accuracy, macro precision / recall / F1 and ROC-AUC of a fine-tuned model;
    # macro precision and recall are checked against its own confusion matrix
    code = main([
        "train", "--data", str(small_fer_dir), "--arch", "vgg_small", "--size", str(SIZE),
        "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "ft"), "--threads", "1",
        "--no-progress",
    ])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    model = str(tmp_path / "ft" / "best")
    assert (
        main(["eval", "--model", model, "--data", str(small_fer_dir), "--split", "test", "--json"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    cm = np.array(report["confusion"], float)
    present = cm.sum(1) > 0
    precision = np.divide(np.diag(cm), cm.sum(0), out=np.zeros(len(cm)), where=cm.sum(0) > 0)
    recall = np.diag(cm) / np.maximum(cm.sum(1), 1)
    assert report["macro_precision"] == pytest.approx(precision[present].mean())
    assert report["macro_recall"] == pytest.approx(recall[present].mean())
    assert 0 <= report["macro_f1"] <= 1 and 0 <= report["macro_roc_auc"] <= 1

    # a gray + heatmap encoder: pretrains, records 2 input channels, and is refused by train
    # --init and probe with the reason instead of silently dropping its first layer
    run = tmp_path / "two"
    args = pretrain_args(small_fer_dir, run, "--epochs", "1", "--set", "heatmap_channel=true")
    pretrain.fit(**args)
    state = load_checkpoint(run / "last.pt", require=("backbone", "in_channels"))
    assert state["in_channels"] == 2 and state["backbone"]["body.0.0.weight"].shape[1] == 2
    assert np.isfinite(json.loads((run / "metrics.jsonl").read_text())["loss"])
    capsys.readouterr()
    code = main([
        "train", "--data", str(small_fer_dir), "--arch", "vgg_small", "--size", str(SIZE),
        "--epochs", "1", "--init", str(run / "last.pt"), "--out", str(tmp_path / "ft2"),
        "--threads", "1", "--no-progress",
    ])  # fmt: skip
    assert code == 2 and "heatmap_channel=false" in capsys.readouterr().err
    code = main([
        "probe", "--init", str(run / "last.pt"), "--data", str(small_fer_dir),
        "--protocols", "knn", "--fractions", "1", "--out", str(tmp_path / "probe"),
    ])  # fmt: skip
    assert code == 2 and "2 input channels" in capsys.readouterr().err

"""Label-efficiency protocols: k-NN and linear probe on frozen features, fine-tuning through
``fer-edge train --init``, at several label fractions, with JSON and markdown output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_helpers import command_options

from fer_edge.cli import main
from fer_edge.data import load_dataset, stratified_subset
from fer_edge.preprocess import PreprocessSpec
from fer_edge.train import pretrain
from fer_edge.train.probe import knn_scores, linear_probe


def test_knn_votes_with_similarity_weights():
    bank = np.array([[1, 0], [0, 1], [1, 1], [-1, 0]], np.float32)
    labels = np.array([0, 1, 1, 2])
    scores = knn_scores(bank, labels, np.array([[2, 0]], np.float32), k=2, num_classes=3)
    # the two nearest by cosine: [1, 0] (class 0, cos 1) and [1, 1] (class 1, cos 0.707)
    expected = [np.exp(1 / 0.07), np.exp(np.sqrt(0.5) / 0.07), 0.0]
    np.testing.assert_allclose(scores[0], expected, rtol=1e-5)
    # k larger than the bank: every bank entry votes
    assert (knn_scores(bank, labels, bank, k=20, num_classes=3) > 0).sum() == 4 * 3


def test_linear_probe_picks_c_on_val_and_covers_absent_classes(rng):
    centers = np.array([[4, 0, 0], [0, 4, 0], [0, 0, 4]], np.float32)

    def blobs(n):
        y = np.arange(n) % 2  # class 2 never appears in training
        return centers[y] + rng.normal(size=(n, 3)).astype(np.float32), y

    (tr, ytr), (va, yva), (te, yte) = blobs(60), blobs(30), blobs(30)
    val_scores, test_scores, selected = linear_probe(tr, ytr, va, yva, te, num_classes=3)
    assert test_scores.shape == (30, 3) and np.all(test_scores[:, 2] == 0)
    assert (test_scores.argmax(1) == yte).mean() > 0.95
    assert selected["C"] in (0.001, 0.01, 0.1, 1.0, 10.0)


def test_probe_protocols_end_to_end(small_fer_dir, tmp_path):
    pretrain.fit(**command_options("pretrain", [
        "--method", "byol", "--data", str(small_fer_dir), "--out", str(tmp_path / "ssl"),
        "--arch", "vgg_small", "--size", "24", "--batch-size", "32", "--limit", "64", "--epochs", "1",
        "--threads", "1", "--no-progress", "--set", "hidden=128",
    ]))  # fmt: skip
    out = tmp_path / "probe"
    code = main([
        "probe", "--init", str(tmp_path / "ssl" / "last.pt"), "--data", str(small_fer_dir),
        "--protocols", "linear", "knn", "finetune", "--fractions", "0.1", "1", "--finetune-epochs", "1",
        "--finetune-batch-size", "16", "--out", str(out), "--threads", "1", "--no-progress",
    ])  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    rows = {(r["protocol"], r["fraction"]): r for r in results["rows"]}
    assert set(rows) == {(p, f) for p in ("linear", "knn", "finetune") for f in (0.1, 1.0)}
    train = load_dataset(small_fer_dir, "train", spec=PreprocessSpec(size=24))
    assert (
        rows["linear", 0.1]["train_faces"]
        == len(stratified_subset(train.labels, 0.1, seed=0))
        == 28
    )
    assert rows["knn", 1.0]["train_faces"] == len(train)
    for r in rows.values():
        assert 0 <= r["test_accuracy"] <= 1 and 0 <= r["val_accuracy"] <= 1
    assert rows["finetune", 1.0]["selected"]["epoch"] == 1
    assert (out / "finetune_0.1" / "best" / "model.json").is_file()
    table = (out / "results.md").read_text()
    assert table.count("| finetune |") == 2 and "| 10% |" in table
    # the recorded command line gives back the arguments of this run
    assert results["pretrain_epochs"] == 1
    words = results["command"].split()
    assert words[:2] == ["fer-edge", "probe"]
    recorded = command_options("probe", words[2:])
    given = command_options("probe", [
        "--init", str(tmp_path / "ssl" / "last.pt"), "--data", str(small_fer_dir),
        "--protocols", "linear", "knn", "finetune", "--fractions", "0.1", "1", "--finetune-epochs", "1",
        "--finetune-batch-size", "16", "--out", str(out),
    ])  # fmt: skip
    assert recorded == given


def test_random_baseline_and_bad_encoder(small_fer_dir, tmp_path, capsys):
    code = main([
        "probe", "--random", "--arch", "vgg_small", "--size", "24", "--data", str(small_fer_dir),
        "--protocols", "knn", "--fractions", "1", "--out", str(tmp_path / "rand"), "--threads", "1",
    ])  # fmt: skip
    assert code == 0
    assert (
        json.loads((tmp_path / "rand" / "results.json").read_text())["encoder"]
        == "random vgg_small"
    )
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert (
        main(
            [
                "probe",
                "--init",
                str(junk),
                "--data",
                str(small_fer_dir),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "cannot be loaded" in capsys.readouterr().err


@pytest.mark.parametrize("fractions", [["0"], ["1.5"]])
def test_fraction_out_of_range_is_refused(small_fer_dir, tmp_path, fractions, capsys):
    argv = [
        "probe",
        "--random",
        "--data",
        str(small_fer_dir),
        "--fractions",
        *fractions,
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 2
    assert "--fractions" in capsys.readouterr().err

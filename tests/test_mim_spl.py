"""MIM-SPL (fer-edge train --method mim-spl): label noise injection, the GMM clean/noisy split,
retrieval relabelling, patch masking and the MIM loss, the distribution shift, and a short noisy
run on real faces that resumes exactly after a kill and ships a 7-class bundle."""

import json
import subprocess

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score
from train_helpers import kill_after_first_epoch, logged_epochs, train_command

from fer_edge.cli import main
from fer_edge.data import load_dataset
from fer_edge.errors import InputError
from fer_edge.preprocess import PreprocessSpec
from fer_edge.train.checkpoint import load_checkpoint
from fer_edge.train.methods.mim_spl import (
    ClassDistributions,
    frozen_bn_statistics,
    gmm_clean_split,
    mask_patches,
    mim_loss,
    patch_mask,
    patchify,
    retrieval_soft_labels,
    soft_cross_entropy,
)
from fer_edge.train.model_io import load_model
from fer_edge.train.supervised import inject_label_noise


def test_label_noise_flips_exactly_the_fraction_and_never_to_the_true_class(small_fer_dir):
    labels = load_dataset(small_fer_dir, "train", spec=PreprocessSpec(48, 1)).labels
    for fraction in (0.2, 0.4):
        noisy = inject_label_noise(labels, fraction, 7, seed=0)
        flipped = noisy != labels
        assert flipped.sum() == round(fraction * len(labels))
        assert noisy.min() >= 0 and noisy.max() < 7
        # every other class is a possible replacement
        assert set(((noisy - labels) % 7)[flipped]) == set(range(1, 7))
        np.testing.assert_array_equal(noisy, inject_label_noise(labels, fraction, 7, seed=0))
        assert (noisy != inject_label_noise(labels, fraction, 7, seed=1)).any()
    for bad in (-0.1, 1.0):
        with pytest.raises(InputError, match="label-noise"):
            inject_label_noise(labels, bad, 7, seed=0)


def test_gmm_split_separates_low_from_high_losses(rng):
    labels, losses, truly_clean = [], [], []
    for c in range(7):
        n_clean, n_noisy = 150, 20 + 20 * c  # noise rate differs per class
        labels += [c] * (n_clean + n_noisy)
        losses += list(np.abs(rng.normal(0.3, 0.15, n_clean))) + list(rng.normal(2.5, 0.4, n_noisy))
        truly_clean += [True] * n_clean + [False] * n_noisy
    labels, losses, truly_clean = np.array(labels), np.array(losses), np.array(truly_clean)
    clean, p_clean = gmm_clean_split(losses, labels, 7, threshold=0.5)
    precision = (clean & truly_clean).sum() / clean.sum()
    recall = (clean & truly_clean).sum() / truly_clean.sum()
    assert precision > 0.98 and recall > 0.98
    assert ((p_clean > 0.5) == clean).all() and (p_clean >= 0).all() and (p_clean <= 1).all()
    # a stricter threshold keeps a subset
    strict, _ = gmm_clean_split(losses, labels, 7, threshold=0.99)
    assert strict.sum() <= clean.sum() and not (strict & ~clean).any()
    # one loss value: nothing to separate, all clean
    flat, _ = gmm_clean_split(np.ones(10), np.zeros(10, int), 7, threshold=0.5)
    assert flat.all()


def test_retrieval_soft_labels_are_normalised_average_precisions(rng):
    # gallery at decreasing cosine similarity to the query e0, labels in that rank order
    angles = np.deg2rad([5, 15, 30, 50, 80])
    gallery = torch.tensor(np.stack([np.cos(angles), np.sin(angles)], 1), dtype=torch.float32)
    ranked = torch.tensor([0, 1, 0, 2, 1])
    perm = torch.tensor([3, 0, 4, 2, 1])  # the gallery's storage order must not matter
    soft = retrieval_soft_labels(torch.tensor([[2.0, 0.0]]), gallery[perm], ranked[perm], 7)
    ap = np.array([(1 / 1 + 2 / 3) / 2, (1 / 2 + 2 / 5) / 2, 1 / 4, 0, 0, 0, 0])
    np.testing.assert_allclose(soft[0].numpy(), ap / ap.sum(), rtol=1e-6)

    # random gallery, several chunks of queries: the same as scikit-learn's AP per class
    queries = torch.from_numpy(rng.normal(size=(9, 16)).astype(np.float32))
    gallery = torch.from_numpy(rng.normal(size=(60, 16)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 4, 60))
    soft = retrieval_soft_labels(queries, gallery, labels, 5, chunk=4)
    qn = torch.nn.functional.normalize(queries, dim=1)
    sims = (qn @ torch.nn.functional.normalize(gallery, dim=1).T).numpy()
    for i in range(len(queries)):
        ap = [average_precision_score(labels.numpy() == c, sims[i]) for c in range(4)] + [0.0]
        np.testing.assert_allclose(soft[i].numpy(), np.array(ap) / sum(ap), rtol=1e-5)


def test_masking_hides_exactly_the_chosen_patches_and_mim_loss_uses_only_them():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 48, 48) + 3.0  # no pixel is 0 by chance
    mask = patch_mask(3, 6, 0.4)
    assert mask.shape == (3, 6, 6) and (mask.sum(dim=(1, 2)) == round(0.4 * 36)).all()
    assert not torch.equal(mask[0], mask[1]), "each face gets its own random patches"
    hidden = patchify(mask_patches(x, mask, 8), 8)  # (3, 6, 6, 64)
    assert (hidden[mask] == 0).all()
    torch.testing.assert_close(hidden[~mask], patchify(x, 8)[~mask], rtol=0, atol=0)

    target = patchify(x, 8)
    pred = target.clone()
    pred[~mask] = 100.0  # visible patches are not scored at all
    assert mim_loss(pred, target, mask).item() == 0.0
    pred[tuple(mask.nonzero()[0])] += 1.0  # one masked patch off by 1 in every pixel
    assert mim_loss(pred, target, mask).item() == pytest.approx(1 / mask.sum().item())
    pred = torch.randn_like(target, requires_grad=True)
    mim_loss(pred, target, mask).backward()
    assert (pred.grad[~mask] == 0).all() and (pred.grad[mask].abs().sum(-1) > 0).all()


def test_masked_pass_leaves_batchnorm_statistics_alone():
    bn = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)).train()
    before = bn[1].running_mean.clone()
    with frozen_bn_statistics(bn):
        bn(torch.randn(4, 1, 8, 8) + 5)
    torch.testing.assert_close(bn[1].running_mean, before, rtol=0, atol=0)
    assert bn[1].momentum == 0.1
    bn(torch.randn(4, 1, 8, 8) + 5)
    assert not torch.equal(bn[1].running_mean, before)


def test_distribution_shift_is_what_the_ema_update_does_and_favours_the_own_class(rng):
    dist = ClassDistributions(3, 8, momentum=0.9)
    z = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(90, 8))).float(), dim=1)
    labels = torch.arange(3).repeat_interleave(30)
    z = z + torch.eye(3, 8)[labels] * 2  # three separated clusters
    dist.reset(z, labels)
    assert dist.ready.all()
    probe = z[:1] * 1.01
    shifts = dist.shift(probe)[0]
    for c in range(3):  # S_c = (|mu' - mu|^2 + |sigma' - sigma|^2) / w^2 of the real update
        moved = ClassDistributions(3, 8, momentum=0.9)
        moved.load_state_dict(dist.state_dict())
        moved.update(probe, torch.tensor([c]))
        change = (moved.mean[c] - dist.mean[c]).pow(2).sum() + (
            (moved.var[c] + 1e-6).sqrt() - (dist.var[c] + 1e-6).sqrt()
        ).pow(2).sum()
        assert shifts[c].item() == pytest.approx(change.item() / 0.1**2, rel=1e-4)
    assert shifts.argmin().item() == 0
    own = dist.contrastive_loss(z[:5], labels[:5], tau=0.1)
    wrong = dist.contrastive_loss(z[:5], torch.full((5,), 2), tau=0.1)
    assert own.item() < wrong.item()


TRAIN = [
    "--method", "mim-spl", "--label-noise", "0.4", "--set", "warmup=1", "--set", "patch=6",
    "--arch", "vgg_small", "--size", "24", "--batch-size", "32", "--lr", "0.02",
    "--threads", "1", "--no-progress",
]  # fmt: skip


def test_noisy_run_trains_resumes_exactly_and_ships_a_7_class_bundle(
    small_fer_dir, tmp_path, capsys
):
    epochs = 3
    full = tmp_path / "full"
    done = subprocess.run(
        train_command(small_fer_dir, full, epochs, TRAIN),
        check=True,
        capture_output=True,
        text=True,
    )
    assert f"label noise: {round(0.4 * 280)} of 280 labels changed" in done.stderr
    history = logged_epochs(full)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for h in history:  # split every epoch from warmup=1 on, with its diagnostics
        assert 0 < h["clean_fraction"] <= 1
        assert 0 <= h["clean_precision"] <= 1 and 0 <= h["clean_recall"] <= 1
        assert h["loss_mim"] > 0 and np.isfinite(h["loss"])
    assert "loss_dcl" not in history[0] and "loss_dcl" in history[1]

    killed = tmp_path / "killed"
    done_at_kill = kill_after_first_epoch(
        train_command(small_fer_dir, killed, epochs, TRAIN), killed
    )
    assert 1 <= done_at_kill < epochs, "the kill should land mid-run"
    subprocess.run(
        train_command(small_fer_dir, killed, epochs, TRAIN) + ["--resume"],
        check=True,
        capture_output=True,
    )
    assert [h["epoch"] for h in logged_epochs(killed)] == [1, 2, 3]
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(killed / "last.pt")
    for part in ("model", "extra", "objective"):
        for k, v in a[part].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b[part][k])), f"{part}.{k}"
    soft = a["objective"]["targets"][~a["objective"]["clean"]]
    assert len(soft) and torch.allclose(soft.sum(1), torch.ones(len(soft)))

    best = load_model(full / "best")
    assert best.model.head.out_features == 7 and len(best.labels) == 7
    capsys.readouterr()
    rc = main(["eval", "--model", str(full / "best"), "--data", str(small_fer_dir),
               "--split", "test", "--json"])  # fmt: skip
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 7 * 15 and np.array(report["confusion"]).shape == (7, 7)


def test_soft_cross_entropy_of_dropped_rows_is_the_mean_over_the_kept_ones():
    logits = torch.randn(6, 7)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    targets = torch.nn.functional.one_hot(labels, 7).float()
    kept = torch.tensor([True, False, True, True, False, True])
    expected = torch.nn.functional.cross_entropy(logits[kept], labels[kept])
    assert soft_cross_entropy(logits, targets * kept[:, None]).item() == pytest.approx(
        expected.item(), rel=1e-5
    )


@pytest.mark.parametrize("relabel", ["model", "drop", "keep"])
def test_relabel_ablations_give_noisy_samples_the_targets_they_name(
    small_fer_dir, tmp_path, capsys, relabel
):
    """model: the network's softmax; drop: an all-zero target row; keep: the given label."""
    out = tmp_path / relabel
    argv = train_command(small_fer_dir, out, 2, [*TRAIN, "--set", f"relabel={relabel}"])
    assert main(argv[argv.index("train") :]) == 0
    state = load_checkpoint(out / "last.pt")["objective"]
    noisy = ~state["clean"]
    assert noisy.any()
    targets = state["targets"][noisy]
    train_labels = load_dataset(small_fer_dir, "train").labels
    noisy_labels = inject_label_noise(train_labels, 0.4, 7, seed=0)
    given = torch.nn.functional.one_hot(torch.as_tensor(noisy_labels).long(), 7).float()[noisy]
    if relabel == "drop":
        assert torch.equal(targets, torch.zeros_like(targets))
    elif relabel == "keep":
        assert torch.equal(targets, given)
    else:
        assert torch.allclose(targets.sum(1), torch.ones(len(targets)))
        assert not torch.equal(targets, given) and (targets > 0).all()
    capsys.readouterr()
    bad = train_command(small_fer_dir, tmp_path / "bad", 2, [*TRAIN, "--set", "relabel=guess"])
    assert main(bad[bad.index("train") :]) == 2
    assert "relabel must be one of retrieval, model, drop, keep" in capsys.readouterr().err

"""Class balance by logit adjustment: the post-hoc search and fold, distillation's
--posthoc-balance on real faces with an imbalanced training split, and QAT keeping the balance
its source model carries."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")

from train_helpers import save_untrained_checkpoint  # noqa: E402

from fer_edge.compress import balance, distill, qat  # noqa: E402
from fer_edge.data import load_dataset  # noqa: E402
from fer_edge.labels import FER_LABELS  # noqa: E402
from fer_edge.train.checkpoint import save_checkpoint  # noqa: E402
from fer_edge.train.model_io import load_model  # noqa: E402
from fer_edge.train.predictor import predict_logits  # noqa: E402

QUICK = {"batch_size": 32, "progress": False, "threads": 2}
# training faces kept per class, in FER_LABELS order: disgust rare, as in FER-2013
TRAIN_COUNTS = (40, 3, 20, 40, 30, 15, 25)


@pytest.fixture(scope="module")
def imbalanced_dir(small_fer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fer_imbalanced")
    shutil.copytree(small_fer_dir / "val", out / "val")
    for name, n in zip(FER_LABELS, TRAIN_COUNTS, strict=True):
        dest = out / "train" / name
        dest.mkdir(parents=True)
        for f in sorted((small_fer_dir / "train" / name).iterdir())[:n]:
            shutil.copy(f, dest / f.name)
    return out


def test_class_log_prior_is_the_smoothed_training_frequency():
    labels = torch.tensor([0, 0, 0, 1, -1, 2, 2])
    prior = balance.class_log_prior(labels, 4).exp()
    torch.testing.assert_close(prior, torch.tensor([4.0, 2.0, 3.0, 1.0]) / 10)


def test_posthoc_search_undoes_a_prior_added_to_the_logits():
    # Scores that would be right for every face, pushed towards the common classes by the log
    # prior: the search must find the TAU (about 1) that takes the prior back out.
    rng = np.random.default_rng(0)
    log_prior = np.log(np.array([0.5, 0.05, 0.2, 0.25]))
    labels = np.repeat(np.arange(4), 50)
    evidence = np.eye(4)[labels] * 1.5 + rng.normal(0, 1, (len(labels), 4))
    logits = evidence + log_prior
    tau, rows = balance.choose_posthoc_tau(logits, labels, log_prior, list("abcd"))
    assert [r["tau"] for r in rows] == list(balance.POSTHOC_TAUS)
    by_tau = {r["tau"]: r for r in rows}
    assert 0.5 <= tau <= 1.5
    assert by_tau[tau]["macro_f1"] == max(r["macro_f1"] for r in rows) > by_tau[0.0]["macro_f1"]
    assert by_tau[tau]["lowest_recall"] > by_tau[0.0]["lowest_recall"]


def test_folding_shifts_only_the_class_logits():
    head = torch.nn.Linear(5, 9)  # 7 classes, then valence and arousal
    x = torch.randn(3, 5)
    before = head(x).detach()
    log_prior = torch.log(torch.full((7,), 1 / 7))
    balance.fold_into_head(head, 0.8, log_prior)
    after = head(x).detach()
    torch.testing.assert_close(after[:, :7], before[:, :7] - 0.8 * log_prior)
    torch.testing.assert_close(after[:, 7:], before[:, 7:])


def test_adjusted_cross_entropy_adds_the_prior_and_is_plain_at_zero():
    logits, labels = torch.randn(6, 7), torch.tensor([0, 1, 2, 3, 4, 5])
    log_prior = torch.log(torch.linspace(1, 7, 7) / 28)
    plain = torch.nn.functional.cross_entropy(logits, labels)
    torch.testing.assert_close(
        balance.adjusted_cross_entropy(logits, labels, 0.0, log_prior), plain
    )
    torch.testing.assert_close(
        balance.adjusted_cross_entropy(logits, labels, 1.0, log_prior),
        torch.nn.functional.cross_entropy(logits + log_prior, labels),
    )


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_untrained_checkpoint(tmp_path_factory.mktemp("balance_teacher") / "teacher.pt")


def test_posthoc_balance_folds_the_val_chosen_shift_into_the_student(
    teacher, imbalanced_dir, tmp_path, monkeypatch
):
    # Two-epoch students are weak enough that the search could keep tau 0 (no shift), which
    # would not show the fold: the candidates here are all non-zero.
    monkeypatch.setattr(balance, "POSTHOC_TAUS", (0.7, 1.5))

    def run(out, **changes):
        return distill.distill(
            teacher=teacher,
            student="vgg_small",
            data=imbalanced_dir,
            epochs=2,
            out=tmp_path / out,
            **QUICK,
            **changes,
        )

    plain, balanced = run("plain"), run("balanced", posthoc_balance=True)
    record = balanced.meta["metrics"]["posthoc_balance"]
    tau, search = record["tau"], record["search"]
    assert [r["tau"] for r in search] == [0.7, 1.5]
    chosen = next(r for r in search if r["tau"] == tau)
    assert chosen["macro_f1"] == max(r["macro_f1"] for r in search)
    assert balanced.meta["metrics"]["val"]["accuracy"] == pytest.approx(chosen["accuracy"])

    val = load_dataset(imbalanced_dir, "val")
    lm_plain, lm_balanced = load_model(plain.root), load_model(balanced.root)
    labels = torch.repeat_interleave(torch.arange(7), torch.tensor(TRAIN_COUNTS))
    log_prior = balance.class_log_prior(labels, 7).numpy()
    # the same training, then the head shifted by -tau * log prior (training is deterministic)
    np.testing.assert_allclose(
        predict_logits(lm_balanced.model, val.images, lm_balanced.spec),
        predict_logits(lm_plain.model, val.images, lm_plain.spec) - tau * log_prior,
        atol=1e-4,
    )
    assert lm_balanced.state["logit_adjust"] == tau and "logit_adjust" in lm_plain.state
    assert lm_plain.state["logit_adjust"] == 0.0


def test_qat_keeps_the_logit_adjustment_its_source_carries(teacher, imbalanced_dir, tmp_path):
    student = distill.distill(
        teacher=teacher,
        student="vgg_small",
        data=imbalanced_dir,
        epochs=1,
        out=tmp_path / "s",
        **QUICK,
    )
    state = dict(load_model(student.root).state)
    adjusted = tmp_path / "adjusted.pt"
    save_checkpoint(adjusted, {**state, "logit_adjust": 2.0})

    def quantised(model, out):
        b = qat.qat(model=model, data=imbalanced_dir, epochs=1, calib_faces=32, out=out, **QUICK)
        return load_model(b.root)

    plain, kept = quantised(student.root, tmp_path / "q0"), quantised(adjusted, tmp_path / "q2")
    assert plain.state["logit_adjust"] == 0.0 and kept.state["logit_adjust"] == 2.0
    # fine-tuning with the prior in the loss moves the weights differently
    assert any(not torch.equal(v, kept.state["model"][k]) for k, v in plain.state["model"].items())

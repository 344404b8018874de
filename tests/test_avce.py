"""AVCE: the closed-form feature transforms against a generic convex solver, gradients, speed,
and valence/arousal learning on real faces with synthetic targets (no VA-labelled data here)."""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
scipy_optimize = pytest.importorskip("scipy.optimize")

from fer_edge.data import load_dataset  # noqa: E402
from fer_edge.metrics import ccc, rmse, sagr  # noqa: E402
from fer_edge.train.methods.avce import (  # noqa: E402
    AvceHead,
    angular_similarity,
    avce_loss,
    inattentive,
    sparsemax,
)


def _simplex_solve(objective, x0: np.ndarray) -> np.ndarray:
    """A generic solver: minimise ``objective`` over the probability simplex (SLSQP)."""
    n = len(x0)
    res = scipy_optimize.minimize(
        objective,
        np.full(n, 1 / n),
        method="SLSQP",
        bounds=[(0, 1)] * n,
        constraints=[{"type": "eq", "fun": lambda p: p.sum() - 1}],
        options={"ftol": 1e-12, "maxiter": 500},
    )
    assert res.success, res.message
    return res.x


@pytest.mark.parametrize("n", [3, 8, 32])
def test_sparsemax_is_the_euclidean_projection_onto_the_simplex(rng, n):
    for _ in range(10):
        z = rng.normal(scale=rng.uniform(0.1, 3), size=n)
        expected = _simplex_solve(lambda p, z=z: ((p - z) ** 2).sum(), z)
        got = sparsemax(torch.from_numpy(z)[None], dim=1)[0].numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert got.min() >= 0 and abs(got.sum() - 1) < 1e-9


def test_the_inattentive_view_is_the_entropy_regularised_projection(rng):
    for _ in range(5):
        z = rng.normal(size=8)

        def objective(p, z=z):
            p = np.clip(p, 1e-12, 1)
            return -(p @ z) + (p * np.log(p)).sum()

        expected = _simplex_solve(objective, z)
        got = inattentive(torch.from_numpy(z)[None])[0].numpy()
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_sparsemax_is_sparse_and_shift_invariant():
    z = torch.tensor([[3.0, 1.0, 0.2, -1.0], [0.1, 0.1, 0.1, 0.1]], dtype=torch.float64)
    p = sparsemax(z)
    assert p[0].tolist() == [1.0, 0.0, 0.0, 0.0]  # one dominant feature: all weight on it
    assert torch.allclose(p[1], torch.full((4,), 0.25, dtype=torch.float64))
    assert torch.allclose(sparsemax(z + 5.0), p)
    assert torch.allclose(sparsemax(z.T, dim=0), p.T)


def test_gradients_match_finite_differences(rng):
    z = torch.from_numpy(rng.normal(size=(4, 7))).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: sparsemax(t, dim=1), (z,))
    preds = [torch.from_numpy(rng.normal(size=(6, 2))).requires_grad_() for _ in range(3)]
    assert torch.autograd.gradcheck(lambda a, b, c: avce_loss(a, b, c, 0.5, 0.005, 0.5), preds)


def test_transforms_take_microseconds_not_a_solver_per_sample():
    z = torch.randn(256, 32)
    for _ in range(5):
        sparsemax(z, dim=1)
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        sparsemax(z, dim=1)
        inattentive(z)
        times.append(time.perf_counter() - t0)
    assert np.median(times) < 0.005  # the seed's solver: 1.3 s per mini-batch


def test_angular_similarity():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.3, 0.4]])
    y = torch.tensor([[2.0, 0.0], [-1.0, 0.0], [0.0, 3.0], [0.3, 0.4]])
    np.testing.assert_allclose(angular_similarity(x, y).numpy(), [1.0, 0.0, 0.5, 1.0], atol=1e-3)


def test_avce_rewards_attentive_agreement_and_inattentive_disagreement():
    pred = torch.tensor([[0.5, 0.5]])
    same, opposite = pred.clone(), -pred
    assert avce_loss(pred, same, opposite, 0.5, 0.005, 0.5) < avce_loss(
        pred, opposite, same, 0.5, 0.005, 0.5
    )


def test_valence_arousal_is_learnt_on_real_faces_with_synthetic_targets(small_fer_dir):
    """A small encoder + AvceHead learns VA targets that are a fixed function of real faces;
    held-out CCC and SAGR rise from chance, and the AVCE term stays finite throughout."""
    torch.manual_seed(0)
    faces = load_dataset(small_fer_dir, "train").images
    faces = faces[np.random.default_rng(0).permutation(len(faces))]  # classes mixed in both parts
    x = torch.nn.functional.avg_pool2d(
        torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255, 6
    ).flatten(1)  # (N, 64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    w = torch.randn(64, 2) / 8
    y = torch.tanh(x @ w)  # synthetic valence/arousal, in [-1, 1]
    train, test = slice(0, 220), slice(220, None)
    encoder = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
    head = AvceHead(64)
    params = [*encoder.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)

    def held_out() -> np.ndarray:
        with torch.no_grad():
            return head(encoder(x[test])).numpy()

    before = held_out()
    truth = y[test].numpy()
    losses = []
    for _ in range(300):
        idx = torch.randint(0, 220, (64,))
        loss, parts = head.loss(encoder(x[train][idx]), y[train][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts)
        assert np.isfinite(parts["avce"])
    after = held_out()
    for axis in range(2):
        assert ccc(truth[:, axis], after[:, axis]) > 0.7
        assert ccc(truth[:, axis], after[:, axis]) > ccc(truth[:, axis], before[:, axis]) + 0.3
        assert sagr(truth[:, axis], after[:, axis]) > 0.75
        assert rmse(truth[:, axis], after[:, axis]) < rmse(truth[:, axis], before[:, axis])
    assert np.mean([p["loss"] for p in losses[-20:]]) < np.mean([p["loss"] for p in losses[:20]])

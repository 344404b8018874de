"""Scores that mean probabilities: the fitted temperature is the one that generated the data,
calibrate stores it in the bundle, the SDK applies it without changing any decision, eval
reports ECE and draws the reliability diagram, and a damaged temperature is refused."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from fer_edge import calibration
from fer_edge.bundle import load_bundle
from fer_edge.cli import main
from fer_edge.data import load_dataset
from fer_edge.errors import BundleError
from fer_edge.recognizer import Recognizer

MODELS = Path(__file__).resolve().parents[1] / "fer_edge" / "models"


def _sampled(temperature: float, n: int = 4000, seed: int = 0):
    """Labels drawn from softmax(z), handed over as logits z * temperature: the temperature
    that calibrates them is ``temperature``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, 7))
    p = calibration.softmax(z).astype(np.float64)
    labels = np.array([rng.choice(7, p=row / row.sum()) for row in p])
    return z * temperature, labels


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fitted_temperature_is_the_one_that_generated_the_labels(true_t):
    pytest.importorskip("scipy", reason="fitting a temperature needs the eval extra (scipy)")
    logits, labels = _sampled(true_t)
    fitted = calibration.fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_t, rel=0.1)
    assert calibration.nll(logits, labels, fitted) < calibration.nll(logits, labels)


def test_ece_is_near_zero_when_calibrated_and_large_when_overconfident():
    logits, labels = _sampled(1.0, n=20000)
    assert calibration.expected_calibration_error(calibration.softmax(logits), labels) < 0.02
    overconfident = calibration.softmax(logits * 3)
    assert calibration.expected_calibration_error(overconfident, labels) > 0.1
    rows = calibration.reliability(calibration.softmax(logits), labels, bins=10)
    assert sum(r["faces"] for r in rows) == len(labels) and len(rows) == 10


@pytest.fixture
def bundle_copy(tmp_path):
    dest = tmp_path / "student"
    shutil.copytree(MODELS / "default", dest)
    return dest


def test_calibrate_stores_the_temperature_and_the_sdk_applies_it(
    bundle_copy, small_fer_dir, tmp_path, capsys
):
    pytest.importorskip("scipy", reason="fitting a temperature needs the eval extra (scipy)")
    png = tmp_path / "rel.png"
    argv = ["calibrate", "--model", str(bundle_copy), "--data", str(small_fer_dir)]
    assert main([*argv, "--reliability", str(png), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    b = load_bundle(bundle_copy)  # still verifies
    assert b.temperature == pytest.approx(stats["temperature"]) and b.temperature != 1.0
    assert b.meta["metrics"]["calibration"]["faces"] == stats["faces"] == 105
    assert stats["nll_after"] <= stats["nll_before"] and png.stat().st_size > 10_000
    faces = list(load_dataset(small_fer_dir, "val").images[:30])
    before = Recognizer(MODELS / "default", detector=None).classify(faces)
    after = Recognizer(bundle_copy, detector=None).classify(faces)
    assert [r.label for r in before] == [r.label for r in after]  # no decision changes
    # the shipped bundle's own temperature is in ``before``: logits up to a per-row constant
    logits = (
        np.log(np.stack([r.probs for r in before])) * load_bundle(MODELS / "default").temperature
    )
    want = calibration.softmax(logits, b.temperature)
    np.testing.assert_allclose(np.stack([r.probs for r in after]), want, atol=1e-4)


def test_eval_reports_ece_and_draws_the_reliability_diagram(small_fer_dir, tmp_path, capsys):
    png = tmp_path / "rel.png"
    argv = ["eval", "--model", str(MODELS / "default"), "--data", str(small_fer_dir)]
    assert main([*argv, "--split", "val", "--json", "--reliability", str(png)]) == 0
    r = json.loads(capsys.readouterr().out)
    shipped_t = load_bundle(MODELS / "default").temperature  # fitted on val by the pipeline
    assert shipped_t != 1.0 and r["temperature"] == pytest.approx(shipped_t)
    assert 0 < r["ece"] < 1 and png.stat().st_size > 10_000


def test_eval_of_several_models_scores_the_mean_of_their_logits(small_fer_dir, capsys):
    from fer_edge.scoring import labelled_logits

    members = [str(MODELS / "default"), str(MODELS / "default_pytorch")]
    argv = ["eval", "--data", str(small_fer_dir), "--split", "val", "--json"]
    assert main([*argv, "--model", members[0], "--model", members[1]]) == 0
    r = json.loads(capsys.readouterr().out)
    (a, y, _), (b, _, _) = (labelled_logits(m, small_fer_dir, "val") for m in members)
    want = ((a + b) / 2).argmax(1)
    assert r["model"] == members and r["temperature"] == 1.0
    assert r["accuracy"] == pytest.approx(float((want == y).mean()))
    assert np.array_equal(np.asarray(r["confusion"]).sum(0), np.bincount(want, minlength=7))
    assert main([*argv, "--model", members[0], "--model", members[1], "--record"]) == 2
    assert "ensemble" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [0, -1.0, 1e9, True, "2", None])
def test_a_damaged_temperature_is_refused(bundle_copy, bad):
    meta = json.loads((bundle_copy / "model.json").read_text())
    meta["model"]["temperature"] = bad
    (bundle_copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="temperature"):
        load_bundle(bundle_copy)
    meta["model"]["temperature"] = float("nan")
    (bundle_copy / "model.json").write_text(json.dumps(meta))  # NaN as JSON writes it
    with pytest.raises(BundleError, match="temperature"):
        load_bundle(bundle_copy)


def test_calibrate_without_the_eval_extra_names_the_package_and_the_extra(
    bundle_copy, small_fer_dir, monkeypatch, capsys
):
    """An SDK-only install (no scipy) gets one line saying what to install, not a traceback."""
    for name in ("scipy", "scipy.optimize"):
        monkeypatch.setitem(sys.modules, name, None)  # as if scipy were not installed
    argv = ["calibrate", "--model", str(bundle_copy), "--data", str(small_fer_dir)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip() == (
        "fer-edge calibrate: error: needs the Python package 'scipy': pip install 'fer-edge[eval]'"
    )

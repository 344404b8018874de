"""Robustness under camera and detector shifts: each shift does what its name says to real
faces, the measurement goes through the SDK's classify path, and the command writes its table,
JSON and plot; the camera augmentation that trains for it is reproducible."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from sdk_helpers import tflite_classifier

from fer_edge import robustness
from fer_edge.cli import main
from fer_edge.data import load_dataset
from fer_edge.errors import InputError
from fer_edge.recognizer import Recognizer


@pytest.fixture(scope="module")
def val(small_fer_dir):
    return load_dataset(small_fer_dir, "val")


def _shift(family: str, level: str) -> robustness.Shift:
    (s,) = [s for s in robustness.standard_shifts() if (s.family, s.level) == (family, level)]
    return s


def test_every_shift_changes_real_faces_and_keeps_them_images(val):
    faces = val.images[:20]
    for shift in robustness.standard_shifts():
        out = robustness.shifted(faces, shift)
        assert all(o.dtype == np.uint8 and o.ndim == 3 and o.shape[2] == 1 for o in out), shift
        again = robustness.shifted(faces, shift)  # deterministic: the same for every model
        assert all(np.array_equal(a, b) for a, b in zip(out, again, strict=True)), shift
        if out[0].shape == faces[0].shape:
            diff = np.mean(
                [np.abs(o.astype(int) - f).mean() for o, f in zip(out, faces, strict=True)]
            )
            assert diff > 0.5, f"{shift.family} {shift.level} barely changes the faces ({diff:.2f})"


def test_shifts_move_scale_and_resize_as_named(val):
    face = val.images[3]
    right = _shift("offset", "right 15%").apply(face, 0)
    # the box moved right by 15% of 48 = 7.2 px, so the face moves left in the crop
    moved = np.abs(right[:, :-8].astype(int) - face[:, 7:-1].astype(int)).mean()
    assert moved < 0.3 * np.abs(right.astype(int) - face.astype(int)).mean()
    assert _shift("resolution", "24 px").apply(face, 0).shape == (24, 24, 1)
    assert _shift("resolution", "200 px").apply(face, 0).shape == (200, 200, 1)
    looser = _shift("margin", "+30%").apply(face, 0)
    small = cv2.resize(face, (37, 37), interpolation=cv2.INTER_AREA)[:, :, None]  # 48 / 1.3

    def err(a):  # how far the 37 px centre of a crop is from the face shrunk to 37 px
        return np.abs(a[5:42, 5:42].astype(int) - small.astype(int)).mean()

    assert err(looser) < 0.5 * err(face)  # a looser box shows the same face, smaller
    dark = _shift("gamma", "2.0").apply(face, 0)
    assert dark.mean() < face.mean() and dark.max() <= face.max()
    flat = _shift("contrast", "0.3").apply(face, 0)
    assert flat.std() < 0.4 * face.std()


def test_measure_scores_through_the_sdk_and_reports_the_worst_shift(val):
    rec = Recognizer("default", detector=None)
    name, classify, _ = robustness.bundle_classifier("default", "auto", None)
    constant = lambda crops: np.tile(np.eye(7, dtype=np.float32)[3], (len(crops), 1))  # noqa: E731
    shifts = [_shift("blur", "sigma 2"), _shift("gamma", "0.7")]
    report = robustness.measure(
        {name: classify, "happy always": constant}, val.images, val.labels, shifts
    )
    sdk = np.array([r.label for r in rec.classify(list(val.images))])
    want = float((sdk == np.array(val.label_names)[val.labels]).mean())
    ours = report["models"][name]
    assert ours["clean"] == pytest.approx(want)
    assert ours["clean"] > 0.4  # a trained model on real faces
    assert ours["worst"]["shift"] == "blur"  # sigma 2 on a 48 px face is the hardest here
    assert ours["worst_drop_points"] == pytest.approx(
        100 * (ours["clean"] - ours["worst"]["accuracy"])
    )
    happy = float((val.labels == 3).mean())
    row = report["models"]["happy always"]
    assert row["clean"] == pytest.approx(happy) and row["shifts"]["blur"][
        "sigma 2"
    ] == pytest.approx(happy)
    with pytest.raises(InputError):
        robustness.measure({name: classify}, val.images[:0], val.labels[:0], shifts)


def test_robustness_command_writes_table_json_and_plot(small_fer_dir, tmp_path, capsys):
    fake_fer = tflite_classifier(tmp_path / "fer.tflite", size=64, nhwc=True)
    png = tmp_path / "shifts.png"
    argv = ["robustness", "--data", str(small_fer_dir), "--split", "val", "--limit", "50"]
    argv += ["--compare-tflite", str(fake_fer), "--plot", str(png), "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["models"]) == {"default_tflite", "fer package"} or len(report["models"]) == 2
    families = {s.family for s in robustness.standard_shifts()}
    for row in report["models"].values():
        assert set(row["shifts"]) == families
    assert report["faces"] <= 50 and png.stat().st_size > 20_000
    assert (
        main(["robustness", "--data", str(small_fer_dir), "--split", "val", "--limit", "30"]) == 0
    )
    table = capsys.readouterr().out
    assert table.startswith("| shift | level |") and "| worst |" in table


def test_camera_augment_is_reproducible_and_does_what_cameras_do(small_fer_dir):
    torch = pytest.importorskip("torch")
    from fer_edge.preprocess import PreprocessSpec
    from fer_edge.train.augment import AUGMENTS, FaceAugment, to_input

    spec = PreprocessSpec()
    x = torch.from_numpy(load_dataset(small_fer_dir, "val", spec=spec).images[:32])
    aug = AUGMENTS["camera"](spec)
    a, b = aug(x, torch.Generator().manual_seed(5)), aug(x, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    assert a.shape == (32, 1, 48, 48) and a.min() >= -1 - 1e-5 and a.max() <= 1 + 1e-5
    still = dict(flip=0, rotate=0, scale=(1, 1), translate=0, brightness=0, contrast=0)
    base = to_input(x, spec)
    for one in ({"gamma": 0.7}, {"downscale": 1.0}, {"noise": 0.05}):
        out = FaceAugment(spec, **still, **one)(x, torch.Generator().manual_seed(1))
        assert (out - base).abs().mean() > 0.005, one
    low = FaceAugment(spec, **still, downscale=1.0)(x, torch.Generator().manual_seed(1))
    # a low-resolution capture loses fine detail: less energy between neighbouring pixels
    assert (low.diff(dim=3).abs().mean()) < 0.9 * base.diff(dim=3).abs().mean()


@pytest.mark.parametrize("sigma", [1.0, 2.0, 2.5])
def test_augment_blur_is_the_blur_the_robustness_check_applies(small_fer_dir, sigma):
    """The training blur at sigma s matches cv2.GaussianBlur at s (what the blur shift does), up
    to rounding and the border; a kernel cut at 3 px was as weak as cv2's 1.75 at sigma 2."""
    torch = pytest.importorskip("torch")
    from fer_edge.preprocess import PreprocessSpec
    from fer_edge.train.augment import FaceAugment

    faces = load_dataset(small_fer_dir, "val").images[:16]
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255
    aug = FaceAugment(PreprocessSpec(), blur=1.0, blur_sigma=(sigma, sigma))
    ours = aug._blur(x, torch.Generator().manual_seed(0)).numpy()[:, 0] * 255
    ref = np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in faces]).astype(np.float32)
    inner = (slice(None), slice(8, -8), slice(8, -8))  # borders: reflect modes differ by a pixel
    assert np.abs(ours - ref)[inner].mean() < 0.5
    weaker = np.stack([cv2.GaussianBlur(f, (0, 0), sigma * 0.85) for f in faces]).astype(np.float32)
    assert np.abs(ours - ref)[inner].mean() < np.abs(ours - weaker)[inner].mean()

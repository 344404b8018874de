"""Face landmarks for training: real FER-2013 faces give a face-shaped mesh, non-faces a low
score, and a dataset's landmarks are computed once."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from fer_edge.data import load_dataset  # noqa: E402
from fer_edge.train import landmarks  # noqa: E402


@pytest.fixture(scope="module")
def landmarker():
    return landmarks.FaceLandmarker(num_threads=1)


def test_real_faces_get_a_face_shaped_mesh(landmarker, small_fer_dir):
    faces = load_dataset(small_fer_dir, "val").images
    points, scores = landmarker(faces)
    assert points.shape == (len(faces), landmarks.NUM_LANDMARKS, 2)
    assert np.median(scores) > 0.9
    c = landmarks.region_centres(points)
    # eyes above the nose above the mouth; the image-left eye left of the nose left of the other
    order_y = (c["left_eye"][:, 1] < c["nose"][:, 1]) & (c["nose"][:, 1] < c["mouth"][:, 1])
    order_x = (c["left_eye"][:, 0] < c["nose"][:, 0]) & (c["nose"][:, 0] < c["right_eye"][:, 0])
    assert order_y.mean() > 0.9 and order_x.mean() > 0.9
    assert ((points > -0.1) & (points < 1.1)).mean() > 0.99  # in the crop


def test_non_faces_score_low(landmarker, media_root):
    cartoon = cv2.imread(str(media_root / "no-faces.jpg"))
    noise = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 1), dtype=np.uint8)
    assert landmarker(cartoon[None])[1].max() < 0.1
    assert landmarker(noise)[1].max() < 0.1


def test_gray_and_bgr_crops_agree(landmarker, small_fer_dir):
    gray = load_dataset(small_fer_dir, "val").images[:8]
    bgr = np.repeat(gray, 3, axis=3)
    np.testing.assert_allclose(landmarker(gray)[0], landmarker(bgr)[0], atol=1e-5)


def test_dataset_landmarks_are_cached(landmarker, small_fer_dir, monkeypatch):
    faces = load_dataset(small_fer_dir, "val").images[:16]
    first = landmarks.dataset_landmarks(faces, landmarker)

    def no_model(*args, **kwargs):
        raise AssertionError("the landmark model ran again")

    monkeypatch.setattr(landmarks.FaceLandmarker, "__call__", no_model)
    np.testing.assert_array_equal(landmarks.dataset_landmarks(faces, landmarker), first)
    other = faces.copy()
    other[0] ^= 1  # different content: computed afresh
    with pytest.raises(AssertionError, match="ran again"):
        landmarks.dataset_landmarks(other, landmarker)

"""Face detection and alignment on real photos: BlazeFace decoding, NMS, tiles, Haar fallback."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fer_edge.align import align_face, crop_matrix, eye_angle
from fer_edge.detect import Detection, load_detector, load_photo_detector
from fer_edge.detect.blazeface import ssd_anchors, weighted_nms
from fer_edge.errors import InputError
from fer_edge.preprocess import PreprocessSpec

# Faces counted by eye in ../shared/data/media (solvay_conference.jpg shows six whole faces;
# the faces cut by its top edge are not counted).
COUNTS = {"portrait.jpg": 1, "group_selfie.jpg": 6, "solvay_conference.jpg": 6, "no-faces.jpg": 0}


@pytest.fixture(scope="module")
def photos(media_root):
    return {name: cv2.imread(str(media_root / name)) for name in COUNTS}


@pytest.fixture(scope="module")
def short():
    return load_detector("blazeface", num_threads=1)


@pytest.fixture(scope="module")
def full_tiled():
    return load_photo_detector(num_threads=1)


def test_anchor_layout_matches_the_models():
    short = ssd_anchors(128, (8, 16, 16, 16), 1.0)
    assert short.shape == (896, 2)
    # 16x16 cells with 2 anchors each, then 8x8 cells with 6 each; centres of cells.
    np.testing.assert_allclose(short[0], short[1])
    np.testing.assert_allclose(short[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(short[512], [0.5 / 8, 0.5 / 8])
    assert ssd_anchors(192, (4,), 0.0).shape == (2304, 2)


def test_weighted_nms_merges_overlaps_and_keeps_separate_faces():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    points = np.zeros((3, 6, 2), np.float32)
    scores = np.array([0.9, 0.6, 0.8], np.float32)
    kept = weighted_nms(boxes, points, scores, 0.3)
    assert len(kept) == 2
    box, _, score = kept[0]
    assert score == pytest.approx(0.9)
    np.testing.assert_allclose(box, (boxes[0] * 0.9 + boxes[1] * 0.6) / 1.5, atol=1e-5)


def test_photo_detector_counts_faces_in_real_photos(photos, full_tiled):
    for name, n in COUNTS.items():
        assert len(full_tiled(photos[name])) == n, name


def test_short_range_finds_the_portrait_with_sane_keypoints(photos, short):
    img = photos["portrait.jpg"]
    dets = short(img)
    assert len(dets) == 1 and dets[0].score > 0.7
    assert short(photos["no-faces.jpg"]) == []
    (x1, y1, x2, y2), pts = dets[0].box, dets[0].landmarks
    assert 0 <= x1 < x2 <= img.shape[1] and 0 <= y1 < y2 <= img.shape[0]
    assert pts.shape == (6, 2)
    right_eye, left_eye, nose, mouth = pts[:4]
    assert x1 < right_eye[0] < left_eye[0] < x2  # unmirrored photo: subject's right on the left
    assert max(right_eye[1], left_eye[1]) < nose[1] < mouth[1] < y2


def test_openvino_runs_the_detector_like_tflite(photos):
    pytest.importorskip("openvino")
    img = photos["group_selfie.jpg"]
    a = load_detector("blazeface_full", backend="tflite")(img)
    b = load_detector("blazeface_full", backend="openvino")(img)
    assert len(a) == len(b) > 0
    np.testing.assert_allclose([d.box for d in a], [d.box for d in b], atol=1.0)


def test_haar_fallback_finds_the_portrait(photos):
    haar = load_detector("haar")
    dets = haar(photos["portrait.jpg"])
    assert len(dets) == 1 and dets[0].landmarks is None
    assert haar(photos["no-faces.jpg"]) == []
    assert haar(cv2.cvtColor(photos["portrait.jpg"], cv2.COLOR_BGR2GRAY))  # gray frames too


def test_unknown_detector_and_bad_options_are_refused():
    with pytest.raises(InputError, match="unknown detector"):
        load_detector("yolo")
    with pytest.raises(InputError, match="min_score"):
        load_detector("blazeface", min_score=1.5)
    with pytest.raises(InputError, match="tiles"):
        load_detector("blazeface", tiles=0)


@pytest.mark.parametrize("angle", [-25, 20])
def test_alignment_levels_the_eyes_of_a_rotated_face(photos, short, angle):
    img = photos["portrait.jpg"]
    h, w = img.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    tilted = cv2.warpAffine(img, rot, (w, h), borderMode=cv2.BORDER_REPLICATE)
    det = short(tilted)[0]
    assert eye_angle(det) == pytest.approx(-angle, abs=6)  # detected tilt = the rotation applied
    m = crop_matrix(det, 0.15, 96)
    eyes = np.hstack([det.landmarks[:2], np.ones((2, 1))]) @ m.T
    assert abs(eyes[0, 1] - eyes[1, 1]) < 3  # level after alignment
    assert 0 < eyes[0, 0] < eyes[1, 0] < 96  # and inside the crop, in order
    crop = align_face(tilted, det, PreprocessSpec())
    assert crop.shape == (48, 48, 1) and crop.dtype == np.uint8


def test_margin_widens_the_crop():
    det = Detection((100.0, 100.0, 200.0, 200.0), 0.9)
    tight, wide = crop_matrix(det, 0.0, 100), crop_matrix(det, 0.25, 100)
    corner = np.array([100.0, 100.0, 1.0])
    assert (tight @ corner) == pytest.approx([0, 0])  # the box fills the crop exactly
    assert (wide @ corner) == pytest.approx([100 / 1.5 * 0.25, 100 / 1.5 * 0.25])

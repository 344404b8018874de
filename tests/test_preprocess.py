import numpy as np
import pytest
import torch

from fer_edge.data import load_dataset, read_image
from fer_edge.errors import InputError
from fer_edge.preprocess import PreprocessSpec, preprocess, resize_face
from fer_edge.train.augment import FaceAugment, supervised_augment, to_input


def test_gray_bgr_bgra_of_the_same_face_agree(fer2013_root):
    face = read_image(next((fer2013_root / "test" / "happy").iterdir()))
    spec = PreprocessSpec(size=48, channels=1)
    bgr = np.repeat(face[:, :, None], 3, axis=2)
    bgra = np.concatenate([bgr, np.full_like(bgr[:, :, :1], 255)], axis=2)
    a, b, c = (preprocess([x], spec) for x in (face, bgr, bgra))
    assert a.shape == (1, 1, 48, 48) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-6)
    assert -1.0 <= a.min() < a.max() <= 1.0


def test_training_and_sdk_paths_give_identical_input(fer2013_root, tmp_path):
    """The same face through the dataset reader + training normalisation and through the SDK's
    preprocess gives the same tensor: no train/serve skew."""
    spec = PreprocessSpec(size=64, channels=3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    src = sorted((fer2013_root / "val" / "sad").iterdir())[:5]
    folder = tmp_path / "sad"
    folder.mkdir()
    for f in src:
        (folder / f.name).write_bytes(f.read_bytes())
    ds = load_dataset(tmp_path, spec=spec, cache=False)
    train_side = to_input(torch.from_numpy(ds.images), spec).numpy()
    sdk_side = preprocess([read_image(p) for p in ds.paths], spec)
    np.testing.assert_allclose(train_side, sdk_side, rtol=0, atol=1e-6)


def test_resize_any_size_and_float_input():
    spec = PreprocessSpec(size=48, channels=1)
    big = (np.random.default_rng(0).random((300, 200, 3)) * 255).astype(np.uint8)
    assert resize_face(big, spec).shape == (48, 48, 1)
    small = np.full((7, 9), 200, np.uint8)
    assert resize_face(small, spec).shape == (48, 48, 1)
    as_float = big.astype(np.float32) / 255.0
    np.testing.assert_array_equal(resize_face(as_float, spec), resize_face(big, spec))


@pytest.mark.parametrize(
    "bad, message",
    [
        (None, "None"),
        (np.zeros((0, 10), np.uint8), "empty"),
        (np.zeros((10, 10, 2), np.uint8), "shape"),
        (np.zeros((2, 10, 10, 3), np.uint8), "shape"),
        (np.full((10, 10), np.nan, np.float32), "NaN"),
        (np.zeros((10, 10), np.complex64), "dtype"),
        (np.full((10, 10), 300, np.int32), "outside"),
        ("a string", "numpy array"),
    ],
)
def test_bad_crops_raise_input_error(bad, message):
    with pytest.raises(InputError, match=message):
        preprocess([bad], PreprocessSpec())


def test_spec_round_trip_and_validation():
    spec = PreprocessSpec(size=64, channels=3, mean=(0.1, 0.2, 0.3), std=(1, 2, 3), face_margin=0.2)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(InputError):
        PreprocessSpec(channels=2)
    with pytest.raises(InputError):
        PreprocessSpec.from_dict({"size": 48})


def test_augment_is_reproducible_and_changes_images(small_fer_dir):
    spec = PreprocessSpec()
    ds = load_dataset(small_fer_dir, "val", spec=spec)
    x = torch.from_numpy(ds.images[:16])
    aug = supervised_augment(spec)
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert a.shape == (16, 1, 48, 48)
    torch.testing.assert_close(a, b)
    assert (a - c).abs().mean() > 0.01
    identity = FaceAugment(
        spec, flip=0, rotate=0, scale=(1, 1), translate=0, brightness=0, contrast=0
    )
    torch.testing.assert_close(identity(x, torch.Generator()), to_input(x, spec), atol=1e-4, rtol=0)

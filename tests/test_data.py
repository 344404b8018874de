import csv

import cv2
import numpy as np
import pytest

from fer_edge import data as data_mod
from fer_edge.data import load_dataset, stratified_subset
from fer_edge.errors import DatasetError
from fer_edge.labels import FER2013_CSV_ORDER, FER_LABELS, canonical


def _copy(src_dir, dest_dir, n):
    dest_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(src_dir.iterdir())[:n]
    for f in files:
        (dest_dir / f.name).write_bytes(f.read_bytes())
    return files


def test_split_root_reads_all_classes(small_fer_dir):
    ds = load_dataset(small_fer_dir, "val")
    assert ds.images.shape[1:] == (48, 48, 1) and ds.images.dtype == np.uint8
    assert ds.label_names == FER_LABELS
    assert ds.class_counts() == {name: 15 for name in FER_LABELS}
    with pytest.raises(DatasetError, match="split"):
        load_dataset(small_fer_dir)
    with pytest.raises(DatasetError, match="no 'holdout'"):
        load_dataset(small_fer_dir, "holdout")


def test_aliases_unknown_classes_and_corrupt_files(fer2013_root, tmp_path):
    _copy(fer2013_root / "val" / "angry", tmp_path / "Anger", 5)
    _copy(fer2013_root / "val" / "happy", tmp_path / "happiness", 4)
    _copy(fer2013_root / "val" / "sad", tmp_path / "contempt", 3)  # a class the model lacks
    (tmp_path / "happiness" / "zero.jpg").write_bytes(b"")
    (tmp_path / "happiness" / "garbage.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    ds = load_dataset(tmp_path)
    counts = ds.class_counts()
    assert counts["angry"] == 5 and counts["happy"] == 4 and counts["sad"] == 0
    assert ds.skipped_classes == {"contempt": 3}
    assert ds.n_unreadable == 2
    assert "contempt (3)" in ds.summary() and "2 unreadable" in ds.summary()


@pytest.mark.parametrize(
    "raw, name",
    [
        ("anger", "angry"),
        ("Sadness", "sad"),
        ("happiness", "happy"),
        ("surprised", "surprise"),
        ("fearful", "fear"),
        ("disgusted", "disgust"),
        ("3_happy", "happy"),
        ("Neutral", "neutral"),
    ],
)
def test_alias_mapping(raw, name):
    assert canonical(raw) == name


def test_kaggle_csv(fer2013_root, tmp_path):
    rows, expected = [], {}
    for usage, split in (("Training", "train"), ("PublicTest", "val"), ("PrivateTest", "test")):
        for name in ("happy", "neutral", "disgust"):
            for f in sorted((fer2013_root / split / name).iterdir())[:2]:
                px = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
                rows.append([FER2013_CSV_ORDER.index(name), " ".join(map(str, px.ravel())), usage])
                expected.setdefault(split, []).append((name, px))
    rows.append([3, "1 2 3", "Training"])  # wrong pixel count
    rows.append(["x", "1 2 3 4", "Training"])  # bad label
    path = tmp_path / "fer2013.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["emotion", "pixels", "Usage"])
        w.writerows(rows)
    train = load_dataset(path, "train")
    assert len(train) == 6 and train.n_unreadable == 2
    assert [FER_LABELS[y] for y in train.labels] == [n for n, _ in expected["train"]]
    np.testing.assert_array_equal(train.images[0, :, :, 0], expected["train"][0][1])
    assert len(load_dataset(path, "test")) == 6
    assert len(load_dataset(path)) == 18
    only = load_dataset(path, "val", labels=("happy", "neutral"))
    assert only.skipped_classes == {"disgust": 2}


def test_label_list_with_valence_arousal(fer2013_root, tmp_path):
    files = _copy(fer2013_root / "val" / "surprise", tmp_path / "img", 3)
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "valence", "arousal"])
        w.writerow([f"img/{files[0].name}", "surprised", "0.5", "0.9"])
        w.writerow([f"img/{files[1].name}", "contempt", "-0.2", "0.1"])
        w.writerow([f"img/{files[2].name}", "3", "", ""])  # index into the label order: happy
        w.writerow(["img/missing.jpg", "sad", "0", "0"])
    ds = load_dataset(tmp_path / "labels.csv")
    assert [ds.label_names[y] for y in ds.labels] == ["surprise", "happy"]
    assert ds.skipped_classes == {"contempt": 1} and ds.n_unreadable == 1
    assert ds.valence[0] == pytest.approx(0.5) and ds.arousal[0] == pytest.approx(0.9)
    assert np.isnan(ds.valence[1])


def test_plain_folder_is_unlabelled(fer2013_root, tmp_path):
    _copy(fer2013_root / "val" / "fear", tmp_path, 4)
    ds = load_dataset(tmp_path)
    assert len(ds) == 4 and (ds.labels == -1).all()


def test_cache_skips_decoding_second_time(small_fer_dir, monkeypatch):
    first = load_dataset(small_fer_dir, "test")

    def fail(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data_mod, "_decode_all", fail)
    second = load_dataset(small_fer_dir, "test")
    np.testing.assert_array_equal(first.images, second.images)
    # a changed file list is a different key: decoding is needed again
    (small_fer_dir / "test" / "happy" / "new.jpg").write_bytes(
        (small_fer_dir / "test" / "happy").iterdir().__next__().read_bytes()
    )
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset(small_fer_dir, "test")
    (small_fer_dir / "test" / "happy" / "new.jpg").unlink()


def test_stratified_subset_keeps_every_class():
    labels = np.repeat(np.arange(7), [400, 40, 400, 700, 500, 450, 300])
    idx = stratified_subset(labels, 0.01, seed=3)
    counts = np.bincount(labels[idx], minlength=7)
    assert (counts >= 1).all() and counts[3] == 7
    np.testing.assert_array_equal(idx, stratified_subset(labels, 0.01, seed=3))
    assert not np.array_equal(idx, stratified_subset(labels, 0.01, seed=4))


def test_missing_and_wrong_paths(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DatasetError, match="not a .csv"):
        load_dataset(tmp_path / "x.txt")
    (tmp_path / "l.csv").write_text("name,category\n")
    with pytest.raises(DatasetError, match="needs a path column"):
        load_dataset(tmp_path / "l.csv")

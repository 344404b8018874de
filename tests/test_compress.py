"""distill, prune and qat: a few steps on real small data, outputs that load back, resume, and
clear errors for bad checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")
pytest.importorskip("litert_torch")

from train_helpers import save_untrained_checkpoint  # noqa: E402

from fer_edge.bundle import load_bundle  # noqa: E402
from fer_edge.compress import distill, finetune, prune, qat, quantize  # noqa: E402
from fer_edge.compress.models import model_cost  # noqa: E402
from fer_edge.data import cache_dir, load_dataset  # noqa: E402
from fer_edge.errors import CheckpointError, InputError  # noqa: E402
from fer_edge.labels import FER_LABELS  # noqa: E402
from fer_edge.preprocess import PreprocessSpec  # noqa: E402
from fer_edge.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from fer_edge.train.model_io import load_model  # noqa: E402
from fer_edge.train.nets import build, count_params  # noqa: E402
from fer_edge.train.predictor import predict_logits  # noqa: E402

QUICK = {"batch_size": 32, "limit_per_class": 8, "progress": False, "threads": 2}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_untrained_checkpoint(tmp_path_factory.mktemp("teacher") / "teacher.pt")


def _distill_options(teacher, data, out) -> dict:
    """The one-epoch distillation run the student fixture makes (and a test re-runs)."""
    return dict(
        teacher=teacher,
        student="compact_cnn",
        data=data,
        epochs=1,
        feat_weight=0.5,
        out=out,
        **QUICK,
    )


@pytest.fixture(scope="module")
def student(teacher, small_fer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "run"
    return distill.distill(**_distill_options(teacher, small_fer_dir, out)).root


@pytest.mark.parametrize(
    "arch", ["compact_cnn", "compact_cnn_wide", "mobilenetv3_small_075", "vgg_small", "vgg_medium"]
)
def test_students_are_small_and_run(arch):
    model = build(arch).eval()
    assert count_params(model) <= distill.MAX_STUDENT_PARAMS
    assert model(torch.zeros(2, 1, 48, 48)).shape == (2, 7)


def test_kd_loss_is_zero_only_for_matching_soft_targets():
    t = torch.tensor([[2.0, 0.0, -1.0]])
    y = torch.tensor([0])
    same = distill.kd_loss(t, t, y, 4.0, 1.0)
    assert same.abs() < 1e-6
    assert distill.kd_loss(-t, t, y, 4.0, 1.0) > 0.01


def test_distill_writes_loadable_student(student, teacher, small_fer_dir):
    b = load_bundle(student)
    assert b.format == "pytorch" and b.meta["model"]["arch"] == "compact_cnn"
    assert b.meta["metrics"]["params"] == count_params(build("compact_cnn"))
    lm = load_model(student)
    faces = load_dataset(small_fer_dir, "val").images[:5]
    assert predict_logits(lm.model, faces, lm.spec).shape == (5, 7) and lm.labels == FER_LABELS
    # A finished run resumes to the same bundle; an existing run is not overwritten by accident.
    options = _distill_options(teacher, small_fer_dir, b.root.parent)
    with pytest.raises(InputError, match="--resume"):
        distill.distill(**options)
    again = distill.distill(**options, resume=True)
    assert again.meta["files"] == b.meta["files"]


def test_an_ensemble_of_one_teacher_twice_teaches_what_that_teacher_teaches(
    teacher, small_fer_dir, tmp_path
):
    def trained(out, **changes):
        options = {**_distill_options(teacher, small_fer_dir, tmp_path / out), **changes}
        return load_checkpoint(distill.distill(**options).root.parent / "last.pt")

    one = trained("one")
    twice = trained("twice", teacher=[teacher, str(teacher)])
    for k, v in one["model"].items():
        torch.testing.assert_close(v, twice["model"][k], msg=k)
    assert twice["config"]["teacher"] == [str(teacher)] * 2
    # flip-TTA soft targets and logit adjustment change what the student learns
    other = trained("tta", teacher_tta="flip", logit_adjust=1.0)
    assert other["config"]["teacher_tta"] == "flip" and other["config"]["logit_adjust"] == 1.0
    assert any(not torch.equal(v, other["model"][k]) for k, v in one["model"].items())
    # so do soft targets of the clean faces instead of the augmented batch
    clean = trained("clean", teacher_targets="clean", feat_weight=0.0)
    online = trained("online", feat_weight=0.0)
    assert clean["config"]["teacher_targets"] == "clean"
    assert any(not torch.equal(v, clean["model"][k]) for k, v in online["model"].items())


def test_clean_soft_targets_are_the_teachers_logits_of_the_unaugmented_faces(
    teacher, small_fer_dir, tmp_path
):
    lm = load_model(teacher)
    ft = finetune.Finetune(
        {"method": "distill"}, lm.spec, data=small_fer_dir, epochs=1, lr=1e-3, out=tmp_path, **QUICK
    )
    net = lm.model.eval()
    targets = distill.clean_soft_targets(ft, lambda x: (net(x), None), batch_size=20)
    expected = predict_logits(net, ft.train.images, lm.spec)
    # bf16 autocast where the CPU has it: compare the class each face gets and the logits loosely
    assert targets.shape == expected.shape
    assert (targets.argmax(1).numpy() == expected.argmax(1)).mean() > 0.9
    np.testing.assert_allclose(targets.numpy(), expected, atol=0.1)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"teacher_tta": "five-crop"}, "--teacher-tta"),
        ({"teacher_targets": "cached"}, "--teacher-targets"),
        ({"teacher_targets": "clean", "feat_weight": 0.5}, "--feat-weight"),
    ],
)
def test_distill_refuses_unknown_target_options(teacher, small_fer_dir, tmp_path, changes, problem):
    with pytest.raises(InputError, match=problem):
        distill.distill(**{**_distill_options(teacher, small_fer_dir, tmp_path), **changes})


def test_prune_shrinks_reloads_and_resumes(student, small_fer_dir, tmp_path):
    out = tmp_path / "prune"
    options = dict(
        model=student, data=small_fer_dir, ratio=0.5, epochs=2, steps=2, out=out, **QUICK
    )
    b = prune.prune(**options)
    m = b.meta["metrics"]
    assert (
        m["after"]["params"] < 0.5 * m["before"]["params"]
        and m["after"]["macs"] < m["before"]["macs"]
    )
    lm = load_model(b.root)
    assert model_cost(lm.model, lm.spec) == m["after"]
    faces = load_dataset(small_fer_dir, "val").images[:8]
    logits = predict_logits(lm.model, faces, lm.spec)
    # Resuming the finished run rebuilds the pruned network from last.pt's structure record.
    (out / "bundle" / "model.json").unlink()
    again = prune.prune(**options, resume=True)
    np.testing.assert_allclose(
        predict_logits(load_model(again.root).model, faces, lm.spec), logits, atol=1e-5
    )


def test_prune_refuses_bad_ratio(student, small_fer_dir, tmp_path):
    with pytest.raises(InputError, match="--ratio"):
        prune.prune(model=student, data=small_fer_dir, ratio=1.2, out=tmp_path, **QUICK)


def test_qat_writes_int8_model_with_ptq_row(student, small_fer_dir, tmp_path):
    b = qat.qat(
        model=student, data=small_fer_dir, epochs=1, calib_faces=64, out=tmp_path / "qat", **QUICK
    )
    assert b.precision == "int8" and b.meta["model"]["kind"] == "qat"
    m = b.meta["metrics"]
    assert {"val", "val_fp32", "val_ptq_int8"} <= set(m) and 0 <= m["val_ptq_int8"]["accuracy"] <= 1
    lm = load_model(b.root)
    assert lm.kind == "qat"
    faces = load_dataset(small_fer_dir, "val")
    logits = predict_logits(lm.model, faces.images, lm.spec)
    assert logits.shape == (len(faces), 7) and np.isfinite(logits).all()
    acc = float((logits.argmax(1) == faces.labels).mean())
    assert acc == pytest.approx(
        m["val"]["accuracy"], abs=0.02
    )  # the bundle rebuilds the trained graph


def test_corrupt_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_model(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


def test_mobilenetv3_student_prunes_and_quantises(small_fer_dir):
    """The MobileNetV3 student (hardswish, squeeze-excitation) through DepGraph pruning and the
    PT2E INT8 flow, on real faces; the QAT row above covers the plain-conv students."""
    from fer_edge.train.model_io import model_from_state, structure_of

    spec = PreprocessSpec()
    model = build("mobilenetv3_small_075").eval()
    before = count_params(model)
    example = torch.zeros(1, 1, spec.size, spec.size)
    prune.prune_step(model, 0.3, example, round_to=4)
    assert count_params(model) < 0.75 * before
    state = {
        "model": model.state_dict(),
        "structure": structure_of(model),
        "arch": "mobilenetv3_small_075",
        "num_classes": len(FER_LABELS),
        "in_channels": 1,
    }
    reloaded = model_from_state(state)
    faces = load_dataset(small_fer_dir, "val").images[:32]
    np.testing.assert_allclose(
        predict_logits(reloaded, faces, spec), predict_logits(model, faces, spec), atol=1e-5
    )
    int8 = quantize.ptq(model, faces, spec)
    logits, ref = predict_logits(int8, faces, spec), predict_logits(model, faces, spec)
    assert logits.shape == (32, len(FER_LABELS)) and np.isfinite(logits).all()
    assert np.abs(logits - ref).max() < 0.5 * np.abs(ref).max() + 0.1  # a quantised twin


def test_clean_soft_targets_are_computed_once_per_teacher_set_and_view(
    teacher, small_fer_dir, tmp_path
):
    """Cached by what they depend on: a second run reads them back, other TTA views or other
    teacher weights get their own entry, and a damaged entry is recomputed."""
    lm = load_model(teacher)
    ft = finetune.Finetune(
        {"method": "distill"}, lm.spec, data=small_fer_dir, epochs=1, lr=1e-3, out=tmp_path, **QUICK
    )
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(len(ft.images) * 7, dtype=torch.float32).view(-1, 7)

    key = distill.clean_targets_key(ft, [teacher], "flip")
    first = distill.cached_clean_soft_targets(ft, key, compute)
    again = distill.cached_clean_soft_targets(ft, key, compute)
    assert len(calls) == 1 and torch.equal(first, again)
    other = tmp_path / "other.pt"
    state = load_checkpoint(teacher)
    state["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
    save_checkpoint(other, state)
    keys = {key, distill.clean_targets_key(ft, [teacher], "none")}
    keys |= {distill.clean_targets_key(ft, [other], "flip")}
    assert len(keys) == 3
    entry = cache_dir() / f"teacher-targets-{key}.npy"
    assert entry.is_file()
    entry.write_bytes(b"not an array")
    assert torch.equal(distill.cached_clean_soft_targets(ft, key, compute), first)
    assert len(calls) == 2

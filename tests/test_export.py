"""Export round trips on a tiny model and real faces: every target and precision loads in the SDK
runtimes and agrees with PyTorch; a failing parity check writes nothing."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sdk_helpers import check_openvino_bundle, ir_weight_types

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")
pytest.importorskip("openvino")

from fer_edge.bundle import load_bundle  # noqa: E402
from fer_edge.cli import main as cli_main  # noqa: E402
from fer_edge.compress import export, parity, qat  # noqa: E402
from fer_edge.data import load_dataset  # noqa: E402
from fer_edge.errors import InputError  # noqa: E402
from fer_edge.labels import FER_LABELS  # noqa: E402
from fer_edge.preprocess import PreprocessSpec, normalize  # noqa: E402
from fer_edge.runtimes import load_runtime  # noqa: E402
from fer_edge.train.augment import to_input  # noqa: E402
from fer_edge.train.model_io import load_model, save_model_bundle  # noqa: E402
from fer_edge.train.nets import build  # noqa: E402
from fer_edge.train.predictor import predict_logits  # noqa: E402


@pytest.fixture(scope="module")
def float_bundle(small_fer_dir, tmp_path_factory):
    """A tiny vgg_small with BN statistics from real faces and a head fitted to their labels, so
    it predicts different classes with real margins (a random net predicts one class for all)."""
    spec = PreprocessSpec()
    torch.manual_seed(0)
    model = build("vgg_small")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the one pass
    train = load_dataset(small_fer_dir, "train", spec=spec)
    x, y = to_input(torch.from_numpy(train.images), spec), torch.from_numpy(train.labels)
    with torch.no_grad():
        model.train()(x)
        feats = model.eval().embed(x)
    opt = torch.optim.Adam(model.head.parameters(), 1e-2)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(model.head(feats), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {
        "model": model.state_dict(),
        "arch": "vgg_small",
        "num_classes": 7,
        "in_channels": 1,
        "labels": list(FER_LABELS),
        "preprocess": spec.to_dict(),
    }
    return save_model_bundle(
        tmp_path_factory.mktemp("float") / "bundle", state, metrics={}, source={}
    ).root


@pytest.fixture(scope="module")
def qat_bundle(float_bundle, small_fer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("qat") / "run"
    return qat.qat(
        model=float_bundle,
        data=small_fer_dir,
        epochs=1,
        batch_size=32,
        limit_per_class=8,
        calib_faces=64,
        out=out,
        progress=False,
        threads=2,
    ).root


@pytest.fixture(scope="module")
def val_faces(small_fer_dir):
    return load_dataset(small_fer_dir, "val")


def _export(model, target, data, out, int8=False):
    return export.export(model, target=target, data=data, out=out, calib_faces=64, int8=int8)


@pytest.mark.parametrize(
    ("target", "int8", "source"),
    [
        ("onnx", False, "float"),
        ("tflite", False, "float"),
        ("openvino", False, "float"),
        ("tflite", True, "qat"),
        ("openvino", True, "qat"),
    ],
)
def test_export_round_trip(
    target, int8, source, float_bundle, qat_bundle, small_fer_dir, val_faces, tmp_path, monkeypatch
):
    if int8:
        # A toy model's random features carry little signal, so INT8 rounding flips many of its
        # decisions; the 97% bar is for trained models. Here: the mechanics and the record.
        monkeypatch.setitem(parity.MIN_AGREEMENT, "int8", 0.5)
    model = qat_bundle if source == "qat" else float_bundle
    b = _export(model, target, small_fer_dir, tmp_path / "out", int8)
    again = load_bundle(tmp_path / "out")  # re-verified from disk: hashes, schema
    assert again.format == target and again.precision == ("int8" if int8 else "fp32")
    p = again.meta["metrics"]["parity"]
    assert p["passed"] and p["faces"] == len(val_faces)
    assert p["top1_agreement"] >= parity.MIN_AGREEMENT[again.precision]
    assert p["max_abs_logit_diff"] < (5.0 if int8 else 1e-3)
    if target == "openvino":
        assert again.meta["model"]["runtime_hints"]["openvino"]["INFERENCE_PRECISION_HINT"] == "f32"
        # A toy net's margins are small, so bf16 rounding may flip a few of its decisions.
        check_openvino_bundle(again, val_faces.images, min_agreement=0.9)
    # The bundle runs in the SDK runtime and gives the PyTorch answer on real faces.
    lm = load_model(model)
    ref = predict_logits(lm.model, val_faces.images, lm.spec)
    got = load_runtime(b, num_threads=1).run(normalize(val_faces.images, b.preprocess))
    assert (got.argmax(1) == ref.argmax(1)).mean() == pytest.approx(p["top1_agreement"])
    assert len(np.unique(ref.argmax(1))) > 1  # the check is not trivially met by a constant net


def test_ptq_export_matches_its_quantised_twin(
    float_bundle, small_fer_dir, val_faces, tmp_path, monkeypatch
):
    """PTQ of a float model: the INT8 graph in the runtime computes what PyTorch's INT8 simulation
    computes. The FP32 agreement bar is lowered because a 300-face toy model is no FER model."""
    monkeypatch.setitem(parity.MIN_AGREEMENT, "int8", 0.5)
    calib = []
    real_ptq = export.ptq
    monkeypatch.setattr(export, "ptq", lambda *a, **k: calib.append(real_ptq(*a, **k)) or calib[-1])
    b = _export(float_bundle, "openvino", small_fer_dir, tmp_path / "out", int8=True)
    assert b.precision == "int8" and b.meta["metrics"]["parity"]["reference"] == "pytorch fp32"
    twin = predict_logits(calib[0], val_faces.images, b.preprocess)
    got = load_runtime(b).run(normalize(val_faces.images, b.preprocess))
    assert (got.argmax(1) == twin.argmax(1)).mean() >= 0.97
    check_openvino_bundle(b, val_faces.images, min_agreement=0.9)
    # int8 convolutions, an f32 classifier (export.float_matmul_weights: the ARM plugin's int8
    # MatMul is wrong)
    assert ir_weight_types(b) == {"Convolution": {"i8"}, "MatMul": {"f32"}}


def test_parity_failure_writes_nothing(float_bundle, small_fer_dir, tmp_path, monkeypatch):
    real = parity.runtime_logits
    monkeypatch.setattr(parity, "runtime_logits", lambda rt, x: real(rt, x)[:, ::-1].copy())
    with pytest.raises(parity.ParityError, match="agrees with pytorch fp32 on only"):
        _export(float_bundle, "onnx", small_fer_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [
        p for p in tmp_path.iterdir() if p.name.startswith(".out")
    ]  # no staging left beside it


def test_onnx_int8_is_refused(float_bundle, small_fer_dir, tmp_path):
    with pytest.raises(InputError, match="ONNX export is FP32"):
        _export(float_bundle, "onnx", small_fer_dir, tmp_path / "out", int8=True)


def test_a_qat_model_to_onnx_exports_the_float_network_it_was_quantised_from(
    float_bundle, qat_bundle, small_fer_dir, val_faces, tmp_path, capsys
):
    """The shipped default student is a QAT model: ``--target onnx`` alone exports its FP32
    source and says so, instead of refusing; asking for INT8 ONNX is still refused."""
    b = _export(qat_bundle, "onnx", small_fer_dir, tmp_path / "out")
    assert "exporting the float network it was quantised from" in capsys.readouterr().err
    assert b.precision == "fp32" and b.meta["source"]["kind"] == "float"
    source = load_model(float_bundle)
    ref = predict_logits(source.model, val_faces.images, source.spec)
    got = load_runtime(b, num_threads=1).run(normalize(val_faces.images, b.preprocess))
    assert np.abs(got - ref).max() < 1e-3  # the float source's logits, not the QAT model's
    with pytest.raises(InputError, match="ONNX export is FP32"):
        _export(qat_bundle, "onnx", small_fer_dir, tmp_path / "int8", int8=True)


def test_cli_refuses_corrupt_checkpoint(small_fer_dir, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    code = cli_main(
        [
            "export",
            "--model",
            str(bad),
            "--target",
            "onnx",
            "--data",
            str(small_fer_dir),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot be loaded safely" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_export_as_typed_works_in_an_empty_folder(tmp_path, monkeypatch, capsys):
    """`fer-edge export --target tflite` and nothing else: the shipped student's PyTorch weights
    (QAT INT8, so the export is INT8 with its learnt quantisation),
    ./default_student_tflite_int8, parity on the shipped faces, and the converters' chatter in a
    log file instead of the terminal (the quantisation stack's import chatter too)."""
    monkeypatch.chdir(tmp_path)
    assert cli_main(["export", "--target", "tflite"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    out = tmp_path / "default_student_tflite_int8"
    b = load_bundle(out)
    p = b.meta["metrics"]["parity"]
    assert b.format == "tflite" and b.precision == "int8"
    assert p["passed"] and p["faces"] == 280
    log = tmp_path / "default_student_tflite_int8.log"
    assert len(log.read_text().splitlines()) > 10  # the converters' lines went here...
    assert len(err) <= 5, err  # ...not to the terminal
    assert err[-1] == f"converter output: {log}"
    assert not any("training mode" in line for line in err)
    assert export.default_out("runs/x/best", "openvino", True) == tmp_path / "best_openvino_int8"


def test_a_parity_set_that_is_not_faces_is_refused(float_bundle, media_root, tmp_path, capsys):
    import cv2

    cartoon = cv2.imread(str(media_root / "no-faces.jpg"))
    for i, cls in enumerate(("happy", "sad", "angry", "neutral")):
        (tmp_path / "things" / cls).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "things" / cls / "a.png"), np.roll(cartoon, 37 * i, axis=1))
    argv = ["export", "--target", "onnx", "--model", str(float_bundle)]
    assert cli_main([*argv, "--data", str(tmp_path / "things"), "--out", str(tmp_path / "o")]) == 2
    assert re.search(r"a face was found in only \d+% of 4 parity images", capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_int8_parity_failure_says_how_to_run_qat(
    float_bundle, small_fer_dir, tmp_path, monkeypatch
):
    real = parity.runtime_logits
    monkeypatch.setattr(parity, "runtime_logits", lambda rt, x: real(rt, x)[:, ::-1].copy())
    with pytest.raises(parity.ParityError) as e:
        _export(float_bundle, "openvino", small_fer_dir, tmp_path / "out", int8=True)
    text = str(e.value)
    assert "quantisation-aware training" in text
    assert f"fer-edge qat --model {float_bundle}" in text
    assert "fer-edge export --target openvino --model runs/qat/bundle" in text
    assert not (tmp_path / "out").exists()

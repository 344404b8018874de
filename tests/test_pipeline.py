"""`fer-edge pipeline`: the CI recipe end to end on real faces, resuming, shipping, bad recipes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("yaml")

from fer_edge import Recognizer  # noqa: E402
from fer_edge.bundle import load_bundle  # noqa: E402
from fer_edge.cli import main  # noqa: E402
from fer_edge.compress import parity  # noqa: E402
from fer_edge.errors import InputError  # noqa: E402
from fer_edge.labels import FER_LABELS  # noqa: E402
from fer_edge.train.pipeline import (  # noqa: E402
    PipelineStateError,
    load_config,
    read_state,
    run_pipeline,
)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
ROWS = ["teacher", "student_fp32", "pruned", "ptq_int8", "qat_int8"]


@pytest.fixture(scope="module")
def pipeline_run(small_fer_dir, tmp_path_factory):
    """The CI recipe run once; INT8 parity of these one-epoch toy models is lower than a
    trained model's, so the INT8 bar is lowered here as in test_export."""
    out = tmp_path_factory.mktemp("pipe") / "run"
    mp = pytest.MonkeyPatch()
    mp.setitem(parity.MIN_AGREEMENT, "int8", 0.5)
    argv = ["pipeline", "--config", str(RECIPES / "ci.yaml"), "--data", str(small_fer_dir)]
    argv += ["--out", str(out), "--no-progress"]
    ship = out.parent / "shipped"
    try:
        code = main([*argv, "--ship", str(ship)])
    finally:
        mp.undo()
    return code, out, ship, argv


def test_every_stage_runs_and_the_report_holds_every_row(pipeline_run):
    code, out, _, _ = pipeline_run
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["rows"])[: len(ROWS)] == ROWS
    assert set(report["stages"]) >= {"pretrain", "teacher", "distill", "prune", "qat"}
    # export is a stage of its own, recorded like the training stages, before the report
    assert set(report["stages"]) >= {f"export/{row}_tflite" for row in ROWS}
    assert (out / "export" / "qat_int8_tflite" / "model.json").is_file()
    # QAT started from the pruned student here: its bundle says what it is, INT8 QAT
    qat_meta = json.loads((out / "qat" / "bundle" / "model.json").read_text())["model"]
    assert (qat_meta["kind"], qat_meta["precision"]) == ("qat", "int8")
    prune_meta = json.loads((out / "prune" / "bundle" / "model.json").read_text())["model"]
    assert prune_meta["kind"] == "pruned"
    for name in ROWS:
        row = report["rows"][name]
        assert 0 <= row["test_accuracy"] <= 1 and row["params"] > 0 and row["macs"] > 0
        # accuracy is the support-weighted mean of the class recalls, so never below the lowest
        assert 0 <= row["test_min_recall"] <= row["test_accuracy"] + 1e-9
        assert row["test_min_recall_class"] in FER_LABELS
        formats = ["tflite", "openvino"] + ([] if name.endswith("int8") else ["onnx"])
        for fmt in formats:
            assert row[fmt]["bytes"] > 0 and row[fmt]["latency_ms"] > 0, (name, fmt, row[fmt])
    # the pruned student is smaller; the INT8 files are smaller than the FP32 ones
    assert report["rows"]["pruned"]["params"] < report["rows"]["student_fp32"]["params"]
    qat, fp32 = report["rows"]["qat_int8"], report["rows"]["pruned"]
    assert qat["tflite"]["bytes"] < fp32["tflite"]["bytes"]
    pngs = ["curves.png", "latency.png", "confusion_teacher.png", "confusion_shipped.png"]
    for png in [*pngs, "reliability_shipped.png", "robustness.png"]:
        assert (out / png).stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert all(f"| {name} |" in md for name in ROWS)
    for png in ("reliability_shipped.png", "robustness.png"):
        assert f"({png})" in md
    assert "| model | format | T | ECE | worst-shift acc | worst shift |" in md
    # the deployed INT8 scores are the runtime's, its lowest class recall too
    assert qat["test_min_recall"] == qat["tflite"]["test_min_recall"]
    assert f"{qat['test_min_recall']:.2f} ({qat['test_min_recall_class']})" in md


def test_every_exported_bundle_is_calibrated_on_val_and_still_verifies(pipeline_run, capsys):
    _, out, _, _ = pipeline_run
    stages = json.loads((out / "pipeline.json").read_text())["stages"]
    exported = sorted(p for p in (out / "export").iterdir() if (p / "model.json").is_file())
    assert len(exported) == 13  # 3 formats x 3 float rows, 2 INT8 formats x 2 INT8 rows
    for bundle in exported:
        b = load_bundle(bundle)
        fit = b.meta["metrics"]["calibration"]
        assert fit["split"] == "val" and fit["faces"] == 105
        assert b.temperature == fit["temperature"] != 1.0
        assert fit["nll_after"] <= fit["nll_before"]
        assert stages[f"calibrate/{bundle.name}"]["options"]["model"] == str(bundle)
        assert main(["verify", str(bundle)]) == 0, capsys.readouterr().err


def test_the_report_gives_the_calibrated_ece_and_the_worst_shift_of_the_shipped_models(
    pipeline_run,
):
    _, out, _, _ = pipeline_run
    report = json.loads((out / "report.json").read_text())
    rows = report["rows"]
    for name in ROWS:
        for fmt in ["tflite", "openvino"] + ([] if name.endswith("int8") else ["onnx"]):
            cell = rows[name][fmt]
            assert (
                0 <= cell["ece"] <= 1
                and cell["temperature"] == load_bundle(cell["bundle"]).temperature
            )
    shifted = report["robustness"]
    assert shifted["faces"] == 35  # the recipe's class-stratified sample
    shipped = {"qat_int8_tflite", "qat_int8_openvino", "pruned_onnx"}
    assert shipped <= set(shifted["models"])
    for name in shipped:
        row, fmt = name.rsplit("_", 1)
        worst = shifted["models"][name]["worst"]
        assert rows[row][fmt]["worst_shift"] == {
            "accuracy": worst["accuracy"],
            "shift": f"{worst['shift']} {worst['level']}",
        }
        assert worst["accuracy"] <= shifted["models"][name]["clean"]
    assert "worst_shift" not in rows["teacher"]["tflite"]  # only the shipped models are shifted
    assert "| worst |" in (out / "robustness.md").read_text()


def test_a_finished_pipeline_is_not_run_again(pipeline_run, monkeypatch):
    code, out, _, argv = pipeline_run
    before = json.loads((out / "pipeline.json").read_text())
    mtimes = {p: p.stat().st_mtime for p in out.glob("*/last.pt")}
    monkeypatch.setitem(parity.MIN_AGREEMENT, "int8", 0.5)
    t0 = time.time()
    assert main(argv) == 0
    assert {p: p.stat().st_mtime for p in out.glob("*/last.pt")} == mtimes
    assert json.loads((out / "pipeline.json").read_text())["stages"] == before["stages"]
    assert time.time() - t0 < 120


def test_shipped_bundles_run_in_the_sdk_with_their_provenance(pipeline_run, media_root):
    _, _, ship, _ = pipeline_run
    names = sorted(p.name for p in ship.iterdir())
    assert names == ["default", "default_openvino", "default_student_pytorch", "default_tflite"]
    frame = np.zeros((96, 96, 3), np.uint8)
    for name in ("default", "default_openvino", "default_tflite"):
        b = load_bundle(ship / name)
        prov = b.meta["source"]["pipeline"]
        assert prov["config"]["distill"]["student"] == "vgg_small"
        assert prov["wall_time_s"] > 0 and prov["hardware"]["cpu"]
        assert b.meta["metrics"]["test"]["n"] > 0
        assert b.precision == ("fp32" if name == "default" else "int8")
        faces = Recognizer(b, detector=None).classify([frame])
        assert len(faces) == 1 and abs(float(faces[0].probs.sum()) - 1) < 1e-4
        assert b.temperature == b.meta["metrics"]["calibration"]["temperature"]


def test_the_shipped_student_weights_export_again_to_the_shipped_int8_tflite(
    pipeline_run, small_fer_dir, tmp_path, monkeypatch
):
    """default_student_pytorch is the QAT student: `fer-edge export --target tflite` with no
    --model converts it, and the result decides as the shipped default_tflite does."""
    from fer_edge import bundle as bundle_io
    from fer_edge.compress import export
    from fer_edge.data import load_dataset
    from fer_edge.preprocess import normalize
    from fer_edge.runtimes import load_runtime

    _, out, ship, _ = pipeline_run
    student = load_bundle(ship / bundle_io.DEFAULT_STUDENT)
    assert student.format == "pytorch" and student.meta["source"]["pipeline"]["recipe"]
    assert student.meta["metrics"]["test"]["n"] > 0
    monkeypatch.setattr(bundle_io, "shipped_models", lambda: ship)
    monkeypatch.setitem(parity.MIN_AGREEMENT, "int8", 0.5)
    again = export.export(
        None, target="tflite", data=small_fer_dir, out=tmp_path / "again", calib_faces=64
    )
    shipped = load_bundle(ship / "default_tflite")
    assert again.precision == "int8"
    test = load_dataset(small_fer_dir, "test")
    decisions = [
        load_runtime(b, num_threads=1).run(normalize(test.images, b.preprocess)).argmax(1)
        for b in (again, shipped)
    ]
    assert (decisions[0] == decisions[1]).mean() >= 0.97


def test_an_ensemble_of_teachers_is_passed_to_distill_and_each_is_a_report_row(
    pipeline_run, tmp_path, monkeypatch
):
    from fer_edge.train import pipeline as pipeline_mod
    from fer_edge.train.pipeline_report import export_plan

    _, out, _, _ = pipeline_run
    teachers = [str(out / "teacher" / "best"), str(out / "distill" / "bundle")]
    cfg = load_config(RECIPES / "ci.yaml", data="d", out=str(tmp_path / "o"))
    cfg["teacher"] = {"from": teachers}
    given = {}

    def stage(self, name, done, **inputs):  # record what each stage is given, train nothing
        given[name] = inputs
        return done

    monkeypatch.setattr(pipeline_mod.Pipeline, "stage", stage)
    models = pipeline_mod.Pipeline(cfg, progress=False).run_training()
    assert given["distill"] == {"teacher": teachers}
    plan = export_plan(models, ("tflite", "onnx"))
    assert list(plan)[:2] == ["teacher", "teacher_2"]
    assert plan["teacher_2"] == (Path(teachers[1]), False, ("tflite", "onnx"))


def test_a_teacher_list_entry_that_is_no_model_is_refused_by_name(pipeline_run, tmp_path):
    from fer_edge.train.pipeline import Pipeline

    _, out, _, _ = pipeline_run
    cfg = load_config(RECIPES / "ci.yaml", data="d", out=str(tmp_path / "o"))
    cfg["teacher"] = {"from": [str(out / "teacher" / "best"), str(tmp_path / "missing")]}
    with pytest.raises(InputError, match=f"teacher.from: {tmp_path / 'missing'} is not a bundle"):
        Pipeline(cfg, progress=False).run_training()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data: d\nout: o\nteachr: {}\n", "unknown section"),
        ("data: d\nout: o\nteacher: [1, 2]\n", "must be a mapping"),
        ("out: o\nteacher: {arch: vgg}\n", "'data' must be set"),
        ("data: d\nout: o\n", "'teacher' needs"),
        ("data: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_recipes_are_refused_with_the_reason(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_config(path)


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_every_shipped_recipe_passes_the_option_checks(recipe):
    """A misspelt option in a long recipe would otherwise surface only when its stage starts,
    hours in."""
    from fer_edge.train.pipeline import check_recipe

    check_recipe(load_config(RECIPES / recipe, data="d"))  # ci.yaml takes --data


def test_a_bad_stage_option_names_the_stage(small_fer_dir, tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(f"data: {small_fer_dir}\nout: {tmp_path / 'o'}\nteacher: {{archh: vgg}}\n")
    assert main(["pipeline", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "stage 'teacher'" in err and "archh" in err


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ("teacher: {archh: vgg}", r"stage 'teacher': unknown option\(s\) archh"),
        ("teacher: {epochs: many}", "stage 'teacher': epochs: 'many' is not a int"),
        ("teacher: {arch: vgg}\ndistill: {alpha: high}", "stage 'distill': alpha: 'high'"),
        ("teacher: {arch: vgg}\nqat: {batch_size: 1.5}", "stage 'qat': batch_size: 1.5"),
        ("teacher: {arch: vgg}\nexport: {options: {parity_faces: x}}", "stage 'export': parity"),
        ("teacher: {arch: vgg}\nreport: {robustness_faces: 0}", "'report': robustness_faces: 0"),
        ("teacher: {arch: vgg}\nreport: {splt: test}", "'report': unknown option splt"),
    ],
)
def test_recipe_options_are_checked_against_the_stage_functions_before_any_stage_runs(
    small_fer_dir, tmp_path, sections, message
):
    path = tmp_path / "r.yaml"
    path.write_text(f"data: {small_fer_dir}\nout: {tmp_path / 'o'}\n{sections}\n")
    with pytest.raises(InputError, match=message):
        run_pipeline(path)
    assert not (tmp_path / "o").exists()


STAGE = '"wall_s": 1.5, "result": "r", "options": {}'


def _state(stages: str) -> str:
    return '{"stages": {' + stages + "}}"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"stages": ', "is not JSON"),
        ('{"steps": {}}', "holds no 'stages' mapping"),
        (_state('"teachr": {' + STAGE + "}"), "unknown stage 'teachr'"),
        ('{"stages": {"teacher": [1]}}', "stage 'teacher' is not a mapping"),
        (
            '{"stages": {"teacher": {"wall_s": "fast", "result": "r", "options": {}}}}',
            "wall_s 'fast'",
        ),
        # an older layout: the command line instead of the options
        ('{"stages": {"qat": {"wall_s": 1, "result": "r", "argv": []}}}', "options None"),
        (_state('"qat": {' + STAGE + ', "argv": []}'), "unknown field.*argv"),
    ],
)
def test_a_damaged_or_foreign_state_file_is_refused_naming_the_problem(tmp_path, text, problem):
    path = tmp_path / "pipeline.json"
    path.write_text(text)
    with pytest.raises(PipelineStateError, match=problem) as e:
        read_state(path)
    assert f"delete {path}" in str(e.value)


def test_the_command_reports_a_damaged_state_file_as_an_error(small_fer_dir, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "pipeline.json").write_text('{"stages": {"teacher": {"wall_s": true}}}')
    argv = ["pipeline", "--config", str(RECIPES / "ci.yaml"), "--data", str(small_fer_dir)]
    assert main([*argv, "--out", str(out)]) == 2
    assert "pipeline.json: stage 'teacher' has wall_s True" in capsys.readouterr().err


def test_an_ensemble_row_scores_the_mean_of_its_teachers_logits():
    from types import SimpleNamespace

    from fer_edge.train.pipeline_report import ENSEMBLE_ROW, ensemble_row

    labels = np.repeat(np.arange(7), 4)
    test = SimpleNamespace(labels=labels)
    # each teacher is sure and right on half the faces and unsure and wrong on the others: alone
    # each scores 50%, their mean 100%
    right, wrong = np.eye(7)[labels], np.eye(7)[(labels + 1) % 7]
    half = (np.arange(len(labels)) < len(labels) // 2)[:, None]
    logits = {
        "teacher": np.where(half, 2 * right, wrong),
        "teacher_2": np.where(half, wrong, 2 * right),
    }
    rows = {
        "teacher": {"params": 10, "macs": 100},
        "teacher_2": {"params": 5, "macs": 50},
        "student_fp32": {"params": 1, "macs": 1},
    }
    row = ensemble_row(rows, logits, test)
    assert row["test_accuracy"] == 1.0 and (logits["teacher"].argmax(1) == labels).mean() == 0.5
    assert (row["params"], row["macs"], row["members"]) == (15, 150, ["teacher", "teacher_2"])
    assert "confusion" not in row and row["test_min_recall_class"] in FER_LABELS
    assert ensemble_row({"teacher": rows["teacher"]}, logits, test) is None
    assert ENSEMBLE_ROW.startswith("teacher")

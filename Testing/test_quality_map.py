"""Estimated Dice: the isotonic fit, the stored map, its held-out check, and what segment reports."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from cli_runner import run_cli
from engine_models import export_intensity_model, sphere_image
from LayerEnsemblesLib.contract import read_metadata
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.evaluation import calibration, quality_fit
from LayerEnsemblesLib.quality import NO_MAP_TEXT, QualityMap


def test_pool_adjacent_violators_by_hand():
    assert quality_fit.isotonic([1, 3, 2, 4]).tolist() == [1, 2.5, 2.5, 4]
    assert quality_fit.isotonic([3, 2, 1]).tolist() == [2, 2, 2]
    assert quality_fit.isotonic([1, 3, 2], weights=[1, 1, 3]).tolist() == pytest.approx([1, 2.25, 2.25])
    # equal scores are pooled before the fit, so their order cannot matter
    distinct, fitted = quality_fit.isotonic_fit([0.5, 0.9, 0.5], [0.9, 0.8, 0.1])
    assert distinct.tolist() == [0.5, 0.9] and fitted.tolist() == pytest.approx([0.5, 0.8])


def test_estimate_interpolates_between_knots_and_is_constant_outside():
    quality = QualityMap("aula_norm_union", [0.5, 1.0], [0.4, 0.8], [0.3, 0.7], [0.5, 0.9])
    assert quality.problems() == []
    assert quality.estimate(0.75).text() == "estimated Dice 0.60 (0.50–0.70)"
    assert quality.estimate(0.1).value == pytest.approx(0.4) and quality.estimate(2.0).high == pytest.approx(
        0.9
    )
    assert quality.estimate(float("nan")) is None


def test_broken_maps_are_named():
    decreasing = QualityMap("aula_norm_union", [0.5, 1.0], [0.8, 0.4], [0.3, 0.3], [0.9, 0.9])
    assert any("non-decreasing" in p for p in decreasing.problems())
    outside = QualityMap("aula_norm_union", [0.5, 1.0], [0.4, 0.8], [0.5, 0.7], [0.6, 0.9])
    assert any("low <= dice <= high" in p for p in outside.problems())
    ragged = QualityMap("aula_norm_union", [0.5], [0.4, 0.8], [0.3], [0.9])
    assert any("equal length" in p for p in ragged.problems())


def _validation(seed: int = 0, cases: int = 30, conditions: int = 6):
    """Dice that rises with the score, with noise, several conditions per case."""
    rng = np.random.default_rng(seed)
    ids = np.repeat([f"case{k:02d}" for k in range(cases)], conditions)
    scores = rng.uniform(0.5, 1.0, ids.size)
    dice = np.clip(1.6 * scores - 0.7 + rng.normal(0, 0.05, ids.size), 0, 1)
    return ids, scores, dice


def test_fitted_map_is_monotone_bounded_and_small():
    ids, scores, dice = _validation()
    quality = quality_fit.fit_quality_map(scores, dice, "aula_norm_union", case_ids=ids)
    assert quality.problems() == []
    assert len(quality.scores) <= quality_fit.MAX_KNOTS and quality.cases == 30 and quality.rows == 180
    # the true relation is 1.6 s - 0.7: the fit recovers it within the noise
    for score in (0.6, 0.75, 0.9):
        assert quality.estimate(score).value == pytest.approx(1.6 * score - 0.7, abs=0.05)
    with pytest.raises(InputError, match="at least 10 cases"):
        quality_fit.fit_quality_map(scores[:5], dice[:5], "aula_norm_union")


def test_cross_validation_by_case_beats_a_constant_and_covers_about_80_percent():
    ids, scores, dice = _validation()
    held = quality_fit.cross_validate(ids, scores, dice, "aula_norm_union", folds=5)
    assert held.cases == 30 and held.rows == 180 and len(held.fold_mae) == 5
    assert held.mae < 0.06 < held.mae_constant
    assert 0.6 <= held.coverage <= 0.95
    with pytest.raises(InputError, match="at least 5 cases"):
        quality_fit.cross_validate(ids[:18], scores[:18], dice[:18], "aula_norm_union", folds=5)


def test_threshold_and_map_only_for_the_decision_score(tiny_model_file, tmp_path):
    ids, scores, dice = _validation()
    quality = quality_fit.fit_quality_map(scores, dice, "aula_norm_anterior", case_ids=ids)
    with pytest.raises(InputError, match="the engine decides on aula_norm_union"):
        calibration.write_threshold(tiny_model_file, None, tmp_path / "out.pt", quality_map=quality)
    other = calibration.choose_threshold(scores, dice, 0.8, 0.9, score="aula_norm_anterior")
    with pytest.raises(InputError, match="not written"):
        calibration.write_threshold(tiny_model_file, other, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """An intensity model with a quality map written by `calibrate --quality-map` from a cases.csv."""
    folder = tmp_path_factory.mktemp("quality")
    model = export_intensity_model(folder / "model.pt", offsets=[0.0, 0.1, 0.2, 0.1, 0.0])
    ids, scores, dice = _validation()
    with open(folder / "cases.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "kind", "case", "condition", "aula_norm_union", "dice_mean"])
        for index, (case, score, value) in enumerate(zip(ids, scores, dice, strict=True)):
            writer.writerow(["LE", "layer_ensemble", case, f"c{index % 6}", score, value])
    out = folder / "calibrated.pt"
    result = run_cli(
        "calibrate", "--model", model, "--from-csv", folder / "cases.csv", "--quality-map", "--out", out
    )
    return model, out, result


def test_calibrate_writes_the_map_with_its_held_out_check(calibrated):
    model, out, result = calibrated
    assert result.returncode == 0, result.stderr
    assert "quality map (aula_norm_union -> dice_mean)" in result.stdout and "MAE" in result.stdout
    metadata = read_metadata(out)
    assert metadata.aula_threshold is None  # no --target-dice: the threshold is left alone
    assert QualityMap.from_dict(metadata.quality_map).problems() == []
    held = metadata.provenance["quality_map_calibration"]["held_out"]
    assert held["folds"] == 5 and held["cases"] == 30 and held["mae"] < held["mae_constant"]
    assert read_metadata(model).quality_map is None  # the source model is untouched


def test_calibrate_needs_a_threshold_request_or_a_map(calibrated, tmp_path):
    model, *_ = calibrated
    result = run_cli(
        "calibrate", "--model", model, "--from-csv", tmp_path / "none.csv", "--target-dice", "0.8"
    )
    assert result.returncode == 2 and "both --target-dice and --sensitivity" in result.stderr
    result = run_cli("calibrate", "--model", model, "--from-csv", tmp_path / "none.csv")
    assert result.returncode == 2 and "--quality-map" in result.stderr


def test_segment_reports_the_estimated_dice_or_says_there_is_none(calibrated, tmp_path):
    model, out, _ = calibrated
    inputs = []
    for index, noise in enumerate([0.05, 0.6]):
        image, _ = sphere_image(noise=noise, seed=index)
        inputs.append(tmp_path / f"case{index}.nii.gz")
        sitk.WriteImage(image, str(inputs[-1]))
    quality = QualityMap.from_dict(read_metadata(out).quality_map)
    for model_file, folder in ((out, tmp_path / "with"), (model, tmp_path / "without")):
        result = run_cli("segment", *inputs, "--model", model_file, "--out", folder, "--maps", "none")
        assert result.returncode == 0, result.stderr
        with open(folder / "summary.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            report = json.loads((folder / f"{row['case']}_report.json").read_text())
            assert row["estimated_dice_text"] == report["estimated_dice_text"]
            if model_file == model:
                assert report["estimated_dice"] is None and row["estimated_dice"] == ""
                assert (
                    report["estimated_dice_text"] == NO_MAP_TEXT
                    and NO_MAP_TEXT in result.stderr + result.stdout
                )
                continue
            expected = quality.estimate(report["score"])
            assert float(row["estimated_dice"]) == pytest.approx(expected.value)
            assert report["estimated_dice"]["low"] == pytest.approx(expected.low)
            assert report["estimated_dice_text"] == expected.text()
            assert expected.text() in result.stderr + result.stdout
    other_heads = run_cli(
        "segment", inputs[0], "--model", out, "--out", tmp_path / "heads", "--skip-heads", "1"
    )
    assert other_heads.returncode == 0, other_heads.stderr
    report = json.loads((tmp_path / "heads" / "case0_report.json").read_text())
    assert (
        report["estimated_dice"] is None
        and "calibrated for the default heads" in report["estimated_dice_text"]
    )


def test_decision_scores_from_the_aula_result():
    from LayerEnsemblesLib.decision_scores import score_value
    from LayerEnsemblesLib.uncertainty import aula_from_labels

    ramp = [np.zeros((4, 4), int) for _ in range(3)]
    for index, label in enumerate(ramp):
        label[:2, :2] = 1  # class A: identical in every head
        label[2:, : 1 + index] = 2  # class B grows head by head
    aula = aula_from_labels(ramp, {"background": 0, "Class A": 1, "B": 2})
    a, b = aula.normalized["Class A"], aula.normalized["B"]
    assert a == 1.0 and b < 1.0
    assert score_value(aula, "aula_norm_class_mean") == pytest.approx((a + b) / 2)
    assert score_value(aula, "aula_norm_class_a") == a
    assert score_value(aula, "aula_norm_union") == aula.normalized["union"]
    assert score_value(aula.to_dict(), "aula_norm_class_mean") == pytest.approx((a + b) / 2)
    assert np.isnan(score_value(aula, "entropy_sum"))


def test_calibrate_can_switch_the_decision_score_and_segment_decides_on_it(calibrated, tmp_path):
    model, *_ = calibrated
    ids, scores, dice = _validation()
    path = tmp_path / "cases.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["method", "kind", "case", "condition", "aula_norm_class0", "aula_norm_class1", "dice_mean"]
        )
        for index, (case, score, value) in enumerate(zip(ids, scores, dice, strict=True)):
            writer.writerow(["LE", "layer_ensemble", case, f"c{index % 6}", score, score - 0.02, value])
    common = ["calibrate", "--model", model, "--from-csv", path, "--decision-score", "aula_norm_class_mean"]
    refused = run_cli(*common, "--quality-map", "--out", tmp_path / "no.pt")
    assert refused.returncode == 2 and "needs a threshold" in refused.stderr
    out = tmp_path / "class_mean.pt"
    done = run_cli(*common, "--quality-map", "--target-dice", "0.8", "--sensitivity", "0.9", "--out", out)
    assert done.returncode == 0, done.stderr
    metadata = read_metadata(out)
    assert metadata.decision_score == "aula_norm_class_mean"
    assert metadata.quality_map["score"] == "aula_norm_class_mean"
    assert read_metadata(model).decision_score == "aula_norm_union"  # the default of older files
    image, _ = sphere_image(noise=0.3, seed=4)
    sitk.WriteImage(image, str(tmp_path / "case.nii.gz"))
    result = run_cli(
        "segment", tmp_path / "case.nii.gz", "--model", out, "--out", tmp_path / "seg", "--maps", "none"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "seg" / "case_report.json").read_text())
    classes = [v for k, v in report["aula"]["normalized"].items() if k != "union"]
    assert report["score_name"] == "aula_norm_class_mean"
    assert report["score"] == pytest.approx(sum(classes) / len(classes))
    assert report["accepted"] == (report["score"] >= metadata.aula_threshold)


def test_contract_rejects_a_map_of_another_score(tiny_model_file):
    metadata = read_metadata(tiny_model_file)
    metadata.quality_map = QualityMap(
        "aula_norm_class_mean", [0.5, 1.0], [0.4, 0.8], [0.3, 0.7], [0.5, 0.9]
    ).to_dict()
    with pytest.raises(InputError, match="not the decision score 'aula_norm_union'"):
        metadata.validate("model.pt")
    metadata.decision_score = "aula_norm_class_mean"
    metadata.validate("model.pt")
    metadata.decision_score = "entropy_sum"
    with pytest.raises(InputError, match="not an aula_norm_"):
        metadata.validate("model.pt")


def test_nested_selection_finds_the_informative_score():
    from LayerEnsemblesLib.evaluation import score_selection

    ids, scores, dice = _validation(seed=2)
    rng = np.random.default_rng(5)
    found = [
        score_selection.Candidate("informative", "", scores),
        score_selection.Candidate("noise", "", rng.uniform(size=scores.size)),
    ]
    result = score_selection.nested_selection(ids, dice, found, 0.8, outer=5, inner=3)
    assert result["picks"] == ["informative"] * 5
    assert np.allclose(result["selected"], scores)
    pairs = np.array([[0.9, 0.8, 0.6], [0.5, 0.7, 0.9]])
    assert score_selection.normalised_aula(pairs, 0).tolist() == pytest.approx([(0.45 + 0.8 + 0.3) / 2, 0.7])
    assert score_selection.normalised_aula(pairs, 2).tolist() == [0.6, 0.9]


@pytest.mark.parametrize(
    "document",
    [
        {"score": "aula_norm_union", "scores": "abc", "dice": [0.5], "low": [0.4], "high": [0.6]},
        {"score": "aula_norm_union", "scores": 3, "dice": 3, "low": 3, "high": 3},
        {"score": "aula_norm_union", "scores": [], "dice": [], "low": [], "high": []},
        {"score": "aula_norm_union", "scores": [[1, 2]], "dice": [[1, 2]], "low": [[1, 2]], "high": [[1, 2]]},
        {"score": "aula_norm_union", "scores": [0.5], "dice": [0.5], "low": [0.4], "high": [0.6], "bogus": 1},
    ],
)
def test_untrusted_quality_maps_give_one_line_errors(tiny_model_file, document):
    metadata = read_metadata(tiny_model_file)
    metadata.quality_map = document
    if "bogus" in document:  # unknown keys are ignored, like unknown metadata fields
        metadata.validate("model.pt")
        return
    with pytest.raises(InputError, match="model.pt: invalid metadata: quality_map"):
        metadata.validate("model.pt")

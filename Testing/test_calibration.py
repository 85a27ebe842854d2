"""AULA threshold calibration on hand-made (score, Dice) pairs, and the metadata round trip."""

from __future__ import annotations

import csv
import subprocess

import pytest
import torch
from cli_runner import run_cli
from conftest import make_tiny_model
from LayerEnsemblesLib.contract import load_model, read_metadata
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.evaluation import baselines, calibration
from synthetic_dataset import write_synthetic_dataset

# eight cases; with a target Dice of 0.8 the poor ones (*) have AULA 0.50, 0.60, 0.70, 0.85
SCORES = [0.95, 0.60, 0.90, 0.70, 0.85, 0.99, 0.50, 0.80]
DICE = [0.90, 0.50, 0.85, 0.75, 0.60, 0.92, 0.30, 0.88]
#             *           *     *           *


def test_threshold_for_three_quarters_of_poor_cases():
    result = calibration.choose_threshold(SCORES, DICE, 0.8, 0.75)
    # the third-lowest poor AULA is 0.70; the next AULA of any case is 0.80: midpoint 0.75
    assert result.threshold == pytest.approx(0.75)
    assert result.sensitivity == pytest.approx(3 / 4)
    assert result.specificity == pytest.approx(1.0)  # no good case scores below 0.75
    assert (result.poor_cases, result.good_cases, result.flagged_cases) == (4, 4, 3)


def test_full_sensitivity_costs_specificity():
    result = calibration.choose_threshold(SCORES, DICE, 0.8, 1.0)
    # the highest poor AULA is 0.85; next is 0.90: threshold 0.875 also flags the good case at 0.80
    assert result.threshold == pytest.approx(0.875)
    assert result.sensitivity == 1.0
    assert result.specificity == pytest.approx(3 / 4)


def test_requested_sensitivity_rounds_up_to_whole_cases():
    assert calibration.choose_threshold(SCORES, DICE, 0.8, 0.5).threshold == pytest.approx(0.65)
    assert calibration.choose_threshold(SCORES, DICE, 0.8, 0.6).threshold == pytest.approx(
        0.75
    )  # ceil(2.4) = 3


def test_poor_case_with_the_highest_score():
    result = calibration.choose_threshold([0.99, 0.5], [0.5, 0.9], 0.8, 1.0)
    assert result.threshold == pytest.approx(0.995)  # half way from 0.99 to the top of the scale
    assert (result.sensitivity, result.specificity) == (1.0, 0.0)
    unreachable = calibration.choose_threshold([1.0, 0.5], [0.5, 0.9], 0.8, 1.0)
    assert unreachable.threshold == 1.0 and unreachable.sensitivity == 0.0  # AULA 1 can never be flagged


def test_nan_pairs_are_dropped_and_errors_are_clear():
    result = calibration.choose_threshold(SCORES + [float("nan")], DICE + [0.1], 0.8, 0.75)
    assert result.dropped_cases == 1 and result.threshold == pytest.approx(0.75)
    with pytest.raises(InputError, match="no case has Dice below 0.2"):
        calibration.choose_threshold(SCORES, DICE, 0.2, 0.9)
    with pytest.raises(InputError, match="--sensitivity"):
        calibration.choose_threshold(SCORES, DICE, 0.8, 0.0)


def test_flag_rates():
    sensitivity, specificity, flagged = calibration.flag_rates(SCORES, DICE, 0.82, 0.8)
    assert (sensitivity, specificity, flagged) == (0.75, 0.75, 4)


def test_threshold_round_trip_through_the_model_file(tiny_model_file, tmp_path):
    result = calibration.choose_threshold(SCORES, DICE, 0.8, 0.75)
    destination = tmp_path / "calibrated.pt"
    before = tiny_model_file.read_bytes()
    calibration.write_threshold(tiny_model_file, result, destination, data="hand-made pairs")
    assert tiny_model_file.read_bytes() == before  # the original is untouched
    metadata = read_metadata(destination)
    assert metadata.aula_threshold == pytest.approx(0.75)
    record = metadata.provenance["aula_calibration"]
    assert (
        record["target_dice"] == 0.8 and record["sensitivity"] == 0.75 and record["data"] == "hand-made pairs"
    )
    original, _ = load_model(tiny_model_file)
    calibrated, _ = load_model(destination)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        for a, b in zip(original(x), calibrated(x), strict=True):
            torch.testing.assert_close(a, b)
    with pytest.raises(InputError, match="already exists"):
        calibration.write_threshold(tiny_model_file, result, destination)
    calibration.write_threshold(destination, result, destination, overwrite=True)  # in place, explicitly
    assert read_metadata(destination).aula_threshold == pytest.approx(0.75)


def test_the_engine_uses_the_calibrated_threshold(tiny_model_file, tmp_path):
    from LayerEnsemblesLib.inference import Predictor

    result = calibration.choose_threshold(SCORES, DICE, 0.8, 0.75)
    destination = tmp_path / "calibrated.pt"
    calibration.write_threshold(tiny_model_file, result, destination)
    image = torch.rand(16, 16, 16).numpy()
    prediction = Predictor(destination, device="cpu").predict(image, spacing=(1.0, 1.0, 1.0), maps=())
    assert prediction.threshold == pytest.approx(0.75) and prediction.threshold_source == "model"


def test_only_layer_ensembles_are_calibrated(tiny_model_file, tmp_path):
    members = [make_tiny_model(tmp_path / f"m{i}.pt", seed=i) for i in range(2)]
    ensemble = baselines.export_deep_ensemble(members, tmp_path / "de.pt")
    result = calibration.choose_threshold(SCORES, DICE, 0.8, 0.75)
    with pytest.raises(InputError, match="has no AULA"):
        calibration.write_threshold(ensemble, result, tmp_path / "out.pt")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli("calibrate", *args)


def test_calibrate_cli_from_an_evaluation_csv(tiny_model_file, tmp_path):
    path = tmp_path / "cases.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "kind", "case", "condition", "aula_norm_union", "dice_mean"])
        for index, (score, dice) in enumerate(zip(SCORES, DICE, strict=True)):
            writer.writerow(["LE", "layer_ensemble", f"case{index}", "clean", score, dice])
            writer.writerow(["DE", "deep_ensemble", f"case{index}", "clean", "", dice])
    common = [
        "--model",
        str(tiny_model_file),
        "--from-csv",
        str(path),
        "--target-dice",
        "0.8",
        "--sensitivity",
        "0.75",
    ]
    out = tmp_path / "calibrated.pt"
    completed = _cli(*common, "--out", str(out))
    assert completed.returncode == 0, completed.stderr
    assert "AULA threshold 0.7500" in completed.stdout and "specificity 1.000" in completed.stdout
    assert read_metadata(out).aula_threshold == pytest.approx(0.75)
    refused = _cli(*common, "--in-place")
    assert refused.returncode == 2 and "add --overwrite" in refused.stderr
    again = _cli(*common, "--out", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_calibrate_cli_on_a_dataset(tmp_path):
    dataset = write_synthetic_dataset(tmp_path / "data", count=2)
    model = make_tiny_model(tmp_path / "model.pt")
    completed = _cli(
        "--model",
        str(model),
        "--dataset",
        str(dataset),
        "--shifts",
        "noise",
        "--severities",
        "3",
        "--target-dice",
        "0.9",
        "--sensitivity",
        "1.0",
        "--in-place",
        "--overwrite",
        "--json",
        "--no-progress",
        "--device",
        "cpu",
    )
    assert completed.returncode == 0, completed.stderr
    import json

    document = json.loads(completed.stdout[: completed.stdout.rindex("}") + 1])
    assert document["poor_cases"] + document["good_cases"] == 4  # 2 cases x (clean + noise-3)
    assert read_metadata(model).aula_threshold == pytest.approx(round(document["threshold"], 6))

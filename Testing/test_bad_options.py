"""Zero, NaN and infinite option values are refused in one line by every command, before any work.

``nan <= 0`` is False, so a range check written as ``x <= 0`` lets NaN through: each command's numeric
options are tried with NaN, infinity and an out-of-range value.
"""

from __future__ import annotations

import pytest
from conftest import make_tiny_model
from LayerEnsemblesLib.cli import main
from synthetic_dataset import write_synthetic_dataset


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_options")
    dataset = write_synthetic_dataset(folder / "data", count=2)
    return make_tiny_model(folder / "model.pt"), dataset, folder / "data" / "imagesTr" / "case_000.nii.gz"


SEGMENT = [
    ("--overlap", "nan", "overlap nan: must be in [0, 1)"),
    ("--overlap", "1", "overlap 1.0: must be in [0, 1)"),
    ("--threshold", "nan", "threshold nan must be in [0, 1]"),
    ("--threshold", "inf", "threshold inf must be in [0, 1]"),
    ("--memory-budget", "nan", "memory budget nan GB: must be a positive number"),
    ("--memory-budget", "inf", "memory budget inf GB: must be a positive number"),
    ("--memory-budget", "0", "memory budget 0.0 GB: must be a positive number"),
]


@pytest.mark.parametrize("option, value, message", SEGMENT)
def test_segment_refuses_bad_numbers(inputs, tmp_path, capsys, option, value, message):
    model, _, image = inputs
    out = tmp_path / "out"
    assert (
        main(["segment", str(image), "--model", str(model), "--out", str(out), "--quiet", option, value]) == 2
    )
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and message in error
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ["calibrate", "--target-dice", "nan", "--sensitivity", "0.9"],
            "--target-dice nan: must be in (0, 1]",
        ),
        (
            ["calibrate", "--target-dice", "0.8", "--sensitivity", "nan"],
            "--sensitivity nan: must be in (0, 1]",
        ),
        (["calibrate", "--target-dice", "0", "--sensitivity", "0.9"], "--target-dice 0.0: must be in (0, 1]"),
        (["evaluate", "--dice-threshold", "nan"], "--dice-threshold nan: must be in (0, 1]"),
        (["evaluate", "--dice-threshold", "inf"], "--dice-threshold inf: must be in (0, 1]"),
        (["evaluate", "--max-cases", "0"], "--max-cases 0: must be at least 1"),
    ],
)
def test_calibrate_and_evaluate_refuse_bad_numbers(inputs, tmp_path, capsys, arguments, message):
    model, dataset, _ = inputs
    command, *options = arguments
    target = (
        ["--out", str(tmp_path / "calibrated.pt")]
        if command == "calibrate"
        else ["--out", str(tmp_path / "e")]
    )
    spec = str(model) if command == "calibrate" else f"LE={model}"
    assert main([command, "--model", spec, "--dataset", str(dataset), *options, *target]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and message in error
    assert not (tmp_path / "calibrated.pt").exists() and not (tmp_path / "e").exists()

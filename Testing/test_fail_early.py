"""Fail early, in one line, before the work: outputs, blow-ups, unrepresentable values, CSVs, reruns.

Every CLI run goes through ``cli_runner.run_cli`` (this checkout first on ``PYTHONPATH``).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cli_runner import cli_command, cli_environment, run_cli
from engine_models import sphere_image
from LayerEnsemblesLib import cli
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.inference import Predictor

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _one_error_line(result: subprocess.CompletedProcess, fragment: str, code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("cases:")]
    errors = [line for line in lines if line.startswith("error:")]
    assert errors and fragment in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


@pytest.fixture(scope="module")
def small_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "case01.nii.gz"
    sitk.WriteImage(sphere_image(size=(16, 16, 16), radius_mm=4.0)[0], str(path))
    return path


@pytest.fixture(scope="module")
def predictor(tiny_model_file) -> Predictor:
    return Predictor(tiny_model_file, device="cpu")


# --- outputs that cannot be written are found before any inference --------------------------------


def test_out_that_is_a_file_is_refused_before_any_case(tmp_path, tiny_model_file):
    out = tmp_path / "results"
    out.write_text("not a folder")
    missing_input = tmp_path / "absent.nii.gz"  # had a case run first, this would be the error
    result = run_cli("segment", missing_input, "--model", tiny_model_file, "--out", out, "--quiet")
    _one_error_line(result, f"{out}: --out must be a folder, but this is a file")
    below_a_file = out / "sub"
    result = run_cli("segment", missing_input, "--model", tiny_model_file, "--out", below_a_file, "--quiet")
    _one_error_line(result, f"{below_a_file}: cannot write outputs in this folder")
    assert "absent.nii.gz" not in result.stderr


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders")
def test_read_only_out_is_refused_before_inference(tmp_path, tiny_model_file):
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o555)
    try:
        result = run_cli(
            "segment", tmp_path / "absent.nii.gz", "--model", tiny_model_file, "--out", out, "--quiet"
        )
    finally:
        out.chmod(0o755)
    _one_error_line(result, "cannot write outputs in this folder")


@pytest.fixture
def second_image(tmp_path, small_image) -> Path:
    other = tmp_path / "case02.nii.gz"
    other.write_bytes(small_image.read_bytes())
    return other


def test_a_folder_where_an_output_file_belongs_fails_that_case_before_its_inference(
    tmp_path, tiny_model_file, small_image, second_image
):
    other = second_image
    out = tmp_path / "out"
    (out / "case01_seg.nii.gz").mkdir(parents=True)
    result = run_cli(
        "segment",
        small_image,
        other,
        "--model",
        tiny_model_file,
        "--out",
        out,
        "--overwrite",
        "--device",
        "cpu",
    )
    line = _one_error_line(result, f"{out / 'case01_seg.nii.gz'}: a folder is in the way of this output file")
    assert "IsADirectoryError" not in line and "case01: " not in result.stderr  # no inference for case01
    assert (out / "case02_report.json").is_file() and not (out / "case01_report.json").exists()
    summary = {row["case"]: row["status"] for row in csv.DictReader(open(out / "summary.csv"))}
    assert summary == {"case01": "failed", "case02": "ok"}


def test_a_folder_where_the_summary_belongs_is_refused_before_any_case(
    tmp_path, tiny_model_file, small_image, second_image
):
    out = tmp_path / "out"
    (out / "summary.csv").mkdir(parents=True)
    result = run_cli(
        "segment", small_image, second_image, "--model", tiny_model_file, "--out", out, "--overwrite"
    )
    _one_error_line(result, "summary.csv: a folder is in the way")
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv"]


# --- resampling blow-ups are refused with an estimate ---------------------------------------------


def test_resampling_that_multiplies_the_voxels_is_refused_with_an_estimate(predictor, tiny_model_file):
    coarse = sphere_image(size=(8, 8, 8), spacing=(5.0, 5.0, 5.0), radius_mm=12.0)[0]  # 512 -> 64,000 voxels
    with pytest.raises(InputError) as caught:
        predictor.predict(coarse, source="coarse.nii.gz")
    message = str(caught.value)
    assert message.startswith("coarse.nii.gz: resampling from (5.0, 5.0, 5.0) mm")
    assert "turns 512 voxels into 64,000 (125x, about" in message and "--allow-large" in message
    allowed = Predictor(tiny_model_file, device="cpu", allow_large=True).predict(coarse)
    assert allowed.segmentation.GetSize() == (8, 8, 8)


def test_a_network_space_above_the_memory_budget_is_refused(tiny_model_file):
    image = sphere_image(size=(24, 24, 24))[0]
    tight = Predictor(tiny_model_file, device="cpu", memory_budget_gb=1e-4)  # 107 kB
    with pytest.raises(
        InputError, match=r"13,824 voxels in network space need about .* above the memory budget"
    ):
        tight.predict(image, source="scan")


def test_cli_refuses_a_blow_up_in_one_line(tmp_path, tiny_model_file):
    path = tmp_path / "thick.nii.gz"
    sitk.WriteImage(sphere_image(size=(8, 8, 6), spacing=(4.0, 4.0, 5.0), radius_mm=9.0)[0], str(path))
    result = run_cli("segment", path, "--model", tiny_model_file, "--out", tmp_path / "out", "--quiet")
    _one_error_line(result, "turns 384 voxels into 30,720 (80x")


# --- values and arrays the network cannot represent -----------------------------------------------


def _volume(dtype=np.float32, offset=0.0, scale=1.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (offset + scale * rng.normal(size=(16, 16, 16))).astype(dtype)


BAD_ARRAYS = [
    ("boolean", lambda: _volume() > 0, {}, "a boolean array is a mask, not an image"),
    ("float16", lambda: _volume(np.float16), {}, "a float16 array; convert it first"),
    ("object", lambda: _volume().astype(object), {}, "an array of object values"),
    ("complex", lambda: _volume().astype(np.complex64), {}, "an array of complex64 values"),
    ("beyond float32", lambda: _volume(np.float64, scale=1e39), {}, "are beyond float32"),
    ("constant in float32", lambda: _volume(np.float64, 1e9, 1e-4), {}, "all become 1000000000.0 in float32"),
    ("int64 constant in float32", lambda: np.full((16, 16, 16), 2**40, np.int64) + np.eye(16, dtype=np.int64),
     {}, "in float32"),
    ("NaN spacing", _volume, {"spacing": (1.0, float("nan"), 1.0)}, "must be three positive finite numbers"),
    ("infinite spacing", _volume, {"spacing": (float("inf"), 1.0, 1.0)}, "three positive finite numbers"),
    ("text spacing", _volume, {"spacing": ("a", 1, 1)}, "must be three positive finite numbers"),
    ("two spacings", _volume, {"spacing": (1.0, 1.0)}, "must be three positive finite numbers"),
]  # fmt: skip


@pytest.mark.parametrize("label, make, options, message", BAD_ARRAYS, ids=[b[0] for b in BAD_ARRAYS])
def test_arrays_the_network_cannot_represent_get_one_line(predictor, label, make, options, message):
    with pytest.raises(InputError) as caught:
        predictor.predict(make(), source="array", **options)
    assert message in str(caught.value) and str(caught.value).startswith("array: ")
    assert "\n" not in str(caught.value)


def test_a_float64_file_that_is_constant_in_float32_is_refused_by_the_cli(tmp_path, tiny_model_file):
    path = tmp_path / "offset.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(_volume(np.float64, 1e9, 1e-4)), str(path))
    result = run_cli("segment", path, "--model", tiny_model_file, "--out", tmp_path / "out", "--quiet")
    _one_error_line(result, f"{path}: the values (")
    assert "in float32, the network's type" in result.stderr


def test_a_sitk_image_with_nan_spacing_or_origin_is_refused(predictor):
    image = sphere_image(size=(16, 16, 16))[0]
    unspaced = sitk.Image(image)
    unspaced.SetSpacing((1.0, float("nan"), 1.0))  # ITK accepts it; resampling would produce nothing
    with pytest.raises(InputError, match=r"unspaced: spacing \(1.0, nan, 1.0\) must be positive finite"):
        predictor.predict(unspaced, source="unspaced")
    moved = sitk.Image(image)
    moved.SetOrigin((0.0, float("nan"), 0.0))
    with pytest.raises(InputError, match="origin .* is not finite"):
        predictor.predict(moved, source="moved")


def test_a_float64_image_with_real_contrast_still_runs(predictor):
    prediction = predictor.predict(_volume(np.float64, 1000.0, 50.0), spacing=(1.0, 1.0, 1.0))
    assert prediction.segmentation.GetSize() == (16, 16, 16)


@pytest.mark.parametrize("window", [(4, 4, 4), (8, 8, 4), (16, 7, 16)])
def test_windows_smaller_than_twice_the_divisor_are_refused(tiny_model_file, window):
    with pytest.raises(
        InputError, match=r"smaller than twice the model's size divisor \(4, 4, 4\); use at least"
    ):
        Predictor(tiny_model_file, device="cpu", window_size=window)


def test_cli_window_and_nan_budget_refused_in_one_line(tmp_path, tiny_model_file, small_image):
    result = run_cli(
        "segment", small_image, "--model", tiny_model_file, "--out", tmp_path, "--window", "4,8,8"
    )
    _one_error_line(result, "smaller than twice the model's size divisor")
    result = run_cli(
        "segment", small_image, "--model", tiny_model_file, "--out", tmp_path, "--memory-budget", "nan"
    )
    _one_error_line(result, "memory budget nan GB: must be a positive number")


# --- CSV inputs of evaluate --report-only and calibrate -------------------------------------------


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


CALIBRATION_HEADER = ["method", "kind", "case", "condition", "aula_norm_union", "dice_mean"]
BAD_CALIBRATION_CSVS = [
    ("word for a number", [["LE", "layer_ensemble", "c1", "clean", "high", 0.5]], CALIBRATION_HEADER,
     "line 2: column 'aula_norm_union' holds 'high', not a number"),
    ("missing score column", [["LE", "layer_ensemble", "c1", "clean", 0.5]],
     CALIBRATION_HEADER[:4] + ["dice_mean"],
     "no column 'aula_norm_union'"),
    ("missing method column", [["c1", 0.9, 0.5]], ["case", "aula_norm_union", "dice_mean"],
     "no column 'method'"),
    ("short row", [["LE", "layer_ensemble", "c1"]], CALIBRATION_HEADER,
     "line 2: the row does not have the header's 6"),
    ("word for a Dice", [["LE", "layer_ensemble", "c1", "clean", 0.9, "n/a"]], CALIBRATION_HEADER,
     "column 'dice_mean' holds 'n/a'"),
]  # fmt: skip


@pytest.mark.parametrize(
    "label, rows, header, message", BAD_CALIBRATION_CSVS, ids=[c[0] for c in BAD_CALIBRATION_CSVS]
)
def test_calibrate_checks_its_csv(tmp_path, tiny_model_file, label, rows, header, message):
    path = _write_csv(tmp_path / "cases.csv", header, rows)
    result = run_cli(
        "calibrate", "--model", tiny_model_file, "--from-csv", path, "--method", "LE",
        "--target-dice", "0.8", "--sensitivity", "0.9",
    )  # fmt: skip
    _one_error_line(result, message)


def test_calibrate_refuses_to_store_a_threshold_on_another_score(tmp_path, tiny_model_file):
    path = _write_csv(
        tmp_path / "cases.csv",
        ["method", "kind", "case", "condition", "aula_raw_union", "aula_norm_anterior", "dice_mean"],
        [
            ["LE", "layer_ensemble", f"c{i}", "clean", 4.0 + i / 10, 0.8 + i / 100, 0.5 + i / 20]
            for i in range(8)
        ],
    )
    for score in ("aula_raw_union", "aula_norm_anterior"):
        out = tmp_path / f"{score}.pt"
        result = run_cli(
            "calibrate", "--model", tiny_model_file, "--from-csv", path, "--method", "LE", "--score", score,
            "--target-dice", "0.8", "--sensitivity", "0.9", "--out", out,
        )  # fmt: skip
        _one_error_line(result, f"--score {score}: the engine accepts or flags a case on aula_norm_union")
        assert not out.exists()
    compared = run_cli(
        "calibrate", "--model", tiny_model_file, "--from-csv", path, "--method", "LE",
        "--score", "aula_raw_union", "--target-dice", "0.8", "--sensitivity", "0.9",
    )  # fmt: skip
    assert compared.returncode == 0, compared.stderr  # comparing another score without storing it is fine


REPORT_HEADER = ["method", "kind", "case", "condition", "shift", "severity", "dice_mean", "aula_norm_union"]


def _report_folder(tmp_path: Path, rows=None, header=REPORT_HEADER) -> Path:
    folder = tmp_path / "evaluation"
    default = [["LE", "layer_ensemble", f"c{i}", "clean", "none", 0, 0.8, 0.9] for i in range(3)]
    _write_csv(folder / "cases.csv", header, default if rows is None else rows)
    return folder


def test_report_only_checks_its_inputs(tmp_path):
    folder = _report_folder(tmp_path, header=[c for c in REPORT_HEADER if c != "condition"],
                            rows=[["LE", "layer_ensemble", "c1", "none", 0, 0.8, 0.9]])  # fmt: skip
    _one_error_line(run_cli("evaluate", "--report-only", folder), "no column 'condition'")
    folder = _report_folder(
        tmp_path / "2", rows=[["LE", "layer_ensemble", "c1", "clean", "none", 0, "good", 0.9]]
    )
    _one_error_line(run_cli("evaluate", "--report-only", folder), "column 'dice_mean' holds 'good'")
    folder = _report_folder(tmp_path / "3", rows=[["", "layer_ensemble", "c1", "clean", "none", 0, 0.8, 0.9]])
    _one_error_line(run_cli("evaluate", "--report-only", folder), "line 2: column 'method' is empty")
    folder = _report_folder(tmp_path / "4")
    (folder / "run.json").write_text('{"methods": ')
    _one_error_line(run_cli("evaluate", "--report-only", folder), "run.json: not valid JSON")
    (folder / "run.json").write_text("[1, 2]")
    _one_error_line(run_cli("evaluate", "--report-only", folder), "run.json: not a JSON object")
    _write_csv(
        folder / "heads.csv", ["method", "condition", "skip_heads", "dice_mean"], [["LE", "clean", "", 0.8]]
    )
    (folder / "run.json").unlink()
    _one_error_line(run_cli("evaluate", "--report-only", folder), "heads.csv, line 2: column 'skip_heads'")


# --- no traceback from any command; exit 2 bad input, 1 bug -----------------------------------------


def test_a_closed_pipe_ends_quietly(tiny_model_file):
    for arguments in (["info", tiny_model_file], ["info", tiny_model_file, "--json"]):
        command = " ".join(f"'{a}'" for a in cli_command(*arguments)) + " | head -c 0"
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            capture_output=True,
            text=True,
            env=cli_environment(),
            timeout=120,
        )
        assert done.stderr == "" and done.returncode == cli.EXIT_BROKEN_PIPE, done.stderr


def _commands_with_bad_input(folder: Path, model: Path) -> list[tuple[list, str]]:
    (folder / "list.json").write_text("[1, 2]")
    (folder / "notes.csv").write_text("a,b\n1,2\n")
    return [
        (["info", folder], f"{folder}: model file not found"),
        (["export", folder], "not a training run folder"),
        (["evaluate", "--report-only", folder / "notes.csv"], "no cases.csv"),
        (["evaluate", "--model", f"LE={model}", "--dataset", folder / "list.json", "--out", folder / "o"],
         "list.json: not a JSON object"),
        (["train", "--dataset", folder / "list.json", "--out", folder / "run"], "not a JSON object"),
        (["segment", folder / "notes.csv", "--model", model, "--out", folder / "s", "--quiet"],
         "unreadable or truncated image"),
        (["calibrate", "--model", model, "--from-csv", folder / "notes.csv", "--target-dice", "0.8",
          "--sensitivity", "0.9"], "no column 'method'"),
        (["demo", "--model", folder, "--out", folder / "d"], "demo model not found"),
    ]  # fmt: skip


def test_every_command_answers_bad_input_with_one_line_and_exit_2(tmp_path, tiny_model_file):
    for arguments, fragment in _commands_with_bad_input(tmp_path, tiny_model_file):
        _one_error_line(run_cli(*arguments), fragment)


def test_an_os_error_is_one_line_with_exit_2(tmp_path, tiny_model_file):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    path = _write_csv(
        tmp_path / "cases.csv", CALIBRATION_HEADER,
        [["LE", "layer_ensemble", f"c{i}", "clean", 0.5 + i / 20, 0.5 + i / 20] for i in range(8)],
    )  # fmt: skip
    result = run_cli(
        "calibrate", "--model", tiny_model_file, "--from-csv", path, "--target-dice", "0.8",
        "--sensitivity", "0.9", "--out", blocker / "model.pt",
    )  # fmt: skip
    _one_error_line(result, f"{blocker / 'model.pt'}: cannot write (File exists: {blocker})")


def test_a_bug_is_one_line_with_exit_1_and_the_traceback_on_request(tiny_model_file, capsys, monkeypatch):
    from LayerEnsemblesLib.commands import info

    def broken(*args, **kwargs):
        return {}["no such key"]  # a genuine bug in a command: KeyError

    monkeypatch.setattr(info, "read_metadata", broken)
    assert cli.main(["info", str(tiny_model_file)]) == cli.EXIT_BUG
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: internal error (KeyError: 'no such key')")
    monkeypatch.setenv(cli.DEBUG_VARIABLE, "1")
    with pytest.raises(KeyError):
        cli.main(["info", str(tiny_model_file)])


# --- reruns: SIGTERM leaves no temporary file; --overwrite replaces only our own outputs -----------


def test_sigterm_during_a_write_removes_the_temporary_file(tmp_path, tiny_model_file, small_image):
    """SIGTERM arrives while an output is being written (injected right after ITK wrote the temp file)."""
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        import SimpleITK as sitk
        from LayerEnsemblesLib import cli
        original = sitk.WriteImage
        def write_then_terminated(image, path, *args, **kwargs):
            original(image, path, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        sitk.WriteImage = write_then_terminated
        sys.exit(cli.main(["segment", {str(small_image)!r}, "--model", {str(tiny_model_file)!r},
                           "--out", {str(out)!r}, "--device", "cpu", "--quiet"]))
        """
    )
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, capture_output=True, text=True, env=cli_environment(), timeout=300)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "terminated"
    assert sorted(p.name for p in out.iterdir()) == []  # neither a temporary nor a half case


def test_overwrite_removes_the_previous_outputs_it_no_longer_writes_and_nothing_else(
    tmp_path, tiny_model_file, small_image
):
    out = tmp_path / "out"
    first = run_cli(
        "segment", small_image, "--model", tiny_model_file, "--out", out, "--maps", "all", "--quiet"
    )
    assert first.returncode == 0, first.stderr
    maps = {"agreement", "entropy", "mutual_information", "variance"}
    assert {p.name for p in out.iterdir()} == {f"case01_{m}.nii.gz" for m in maps} | {
        "case01_seg.nii.gz",
        "case01_report.json",
    }
    (out / "case01_notes.txt").write_text("the reviewer's notes")  # not ours: never touched
    outside = tmp_path / "case01_entropy.nii.gz"  # a report edited to point outside the folder
    outside.write_text("keep me")
    report = json.loads((out / "case01_report.json").read_text())
    report["outputs"]["foreign"] = str(outside)
    (out / "case01_report.json").write_text(json.dumps(report))
    again = run_cli(
        "segment",
        small_image,
        "--model",
        tiny_model_file,
        "--out",
        out,
        "--maps",
        "entropy",
        "--overwrite",
        "--quiet",
    )
    assert again.returncode == 0, again.stderr
    assert {p.name for p in out.iterdir()} == {
        "case01_seg.nii.gz",
        "case01_entropy.nii.gz",
        "case01_report.json",
        "case01_notes.txt",
    }
    assert outside.read_text() == "keep me"
    assert json.loads((out / "case01_report.json").read_text())["outputs"] == {
        "segmentation": str(out / "case01_seg.nii.gz"),
        "entropy": str(out / "case01_entropy.nii.gz"),
    }

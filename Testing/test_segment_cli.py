"""End to end: ``layer-ensembles segment`` in a subprocess on real files with real exported models."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from cli_runner import run_cli
from engine_models import (
    error_lines,
    export_intensity_model,
    oblique_volume,
    sphere_image,
    write_dicom_series,
)
from LayerEnsemblesLib.inference import Predictor


@pytest.fixture(scope="module")
def intensity_model(tmp_path_factory):
    return export_intensity_model(
        tmp_path_factory.mktemp("models") / "intensity.pt", offsets=[0.0, 0.1, 0.2, 0.1, 0.0]
    )


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
    )


def test_one_case_end_to_end_with_a_real_network(tmp_path, tiny_model_file):
    image = oblique_volume()
    source = tmp_path / "patient07.nii.gz"
    sitk.WriteImage(image, str(source))
    out = tmp_path / "out"
    result = run_cli(
        "segment",
        source,
        "--model",
        tiny_model_file,
        "--out",
        out,
        "--maps",
        "all",
        "--probabilities",
        "--device",
        "cpu",
        "--window",
        "32,32,32",
    )
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "patient07_seg.nii.gz",
            "patient07_agreement.nii.gz",
            "patient07_entropy.nii.gz",
            "patient07_mutual_information.nii.gz",
            "patient07_variance.nii.gz",
            "patient07_probabilities.nii.gz",
            "patient07_report.json",
        ]
    )  # one input: no summary.csv, and no temporary files left behind
    written_input = sitk.ReadImage(str(source))
    segmentation = sitk.ReadImage(str(out / "patient07_seg.nii.gz"))
    assert same_grid(segmentation, written_input)
    assert segmentation.GetPixelID() == sitk.sitkUInt8
    agreement = sitk.ReadImage(str(out / "patient07_agreement.nii.gz"))
    assert same_grid(agreement, written_input)
    values = sitk.GetArrayFromImage(agreement)
    assert values.min() >= 0 and values.max() <= 1 + 1e-6
    assert sitk.ReadImage(str(out / "patient07_probabilities.nii.gz")).GetNumberOfComponentsPerPixel() == 3

    report = json.loads((out / "patient07_report.json").read_text())
    assert report["case"] == "patient07" and report["input"] == str(source)
    assert (
        set(report["aula"]["raw"])
        == set(report["aula"]["normalized"])
        == {"structure1", "structure2", "union"}
    )
    assert report["aula"]["pair_labels"] == [
        "encoder1/encoder0",
        "encoder2/encoder1",
        "decoder1/encoder2",
        "decoder0/decoder1",
        "final/decoder0",
    ]
    assert all(len(curve) == 5 for curve in report["aula"]["curves"].values())
    assert (report["threshold"], report["threshold_source"]) == (0.9, "default")
    assert report["device_report"]["device"] == "cpu" and report["device_report"]["torch"]
    assert {"read", "preprocess", "forward", "reduce", "postprocess", "write", "total"} <= set(
        report["timings"]
    )
    assert report["outputs"]["segmentation"].endswith("patient07_seg.nii.gz")
    # the CLI reports what the Python API computes for the same file
    expected = Predictor(tiny_model_file, device="cpu", window_size=(32, 32, 32)).predict(written_input)
    assert report["aula"]["normalized"]["union"] == pytest.approx(expected.aula.normalized["union"], abs=1e-9)
    assert (report["decision"], report["reason"]) == (expected.decision, expected.reason)
    assert (sitk.GetArrayFromImage(segmentation) == sitk.GetArrayFromImage(expected.segmentation)).all()


def test_several_inputs_give_a_summary_ranked_by_aula(tmp_path, intensity_model):
    inputs = []
    for index, noise in enumerate([0.05, 0.6, 0.3]):
        image, _ = sphere_image(noise=noise, seed=index)
        path = tmp_path / (f"case{index}.nrrd" if index == 1 else f"case{index}.nii.gz")
        sitk.WriteImage(image, str(path))
        inputs.append(path)
    out = tmp_path / "out"
    result = run_cli(
        "segment", *inputs, "--model", intensity_model, "--out", out, "--maps", "none", "--threshold", "0.95"
    )
    assert result.returncode == 0, result.stderr
    assert (out / "case1_seg.nrrd").is_file()  # NRRD in, NRRD out
    assert (out / "case0_seg.nii.gz").is_file() and not list(out.glob("*_agreement*"))
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    scores = [float(row["aula_normalized"]) for row in rows]
    assert scores == sorted(scores)
    assert [row["case"] for row in rows] == ["case1", "case2", "case0"]  # noisiest first
    assert [row["rank"] for row in rows] == ["1", "2", "3"]
    for row in rows:
        report = json.loads((out / f"{row['case']}_report.json").read_text())
        assert float(row["aula_normalized"]) == pytest.approx(report["aula"]["normalized"]["union"])
        assert row["decision"] == report["decision"] == ("accepted" if report["score"] >= 0.95 else "flagged")
        assert report["threshold_source"] == "argument"
    assert "aula_normalized_class1" in rows[0]


def test_a_failing_case_does_not_stop_the_others(tmp_path, intensity_model):
    good, _ = sphere_image()
    sitk.WriteImage(good, str(tmp_path / "good_a.nii.gz"))
    sitk.WriteImage(good, str(tmp_path / "good_b.mha"))
    (tmp_path / "broken.nii.gz").write_text("not an image")
    out = tmp_path / "out"
    result = run_cli(
        "segment",
        tmp_path / "good_a.nii.gz",
        tmp_path / "broken.nii.gz",
        tmp_path / "good_b.mha",
        "--model",
        intensity_model,
        "--out",
        out,
    )
    assert result.returncode == 2
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and str(tmp_path / "broken.nii.gz") in errors[0]
    assert (out / "good_a_report.json").is_file() and (out / "good_b_seg.mha").is_file()
    assert not list(out.glob("broken*"))
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["status"] for row in rows] == ["ok", "ok", "failed"]
    assert rows[-1]["case"] == "broken" and "unreadable" in rows[-1]["error"]


def test_head_selection_and_threshold_reach_the_report(tmp_path, tiny_model_file):
    source = tmp_path / "case.nii.gz"
    sitk.WriteImage(oblique_volume(seed=1), str(source))
    result = run_cli(
        "segment",
        source,
        "--model",
        tiny_model_file,
        "--out",
        tmp_path / "a",
        "--heads",
        "2:5",
        "--threshold",
        "0.25",
        "--window",
        "16,16,16",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "a" / "case_report.json").read_text())
    assert (report["heads"]["first"], report["heads"]["stop"]) == (2, 5)
    assert report["heads"]["kept"] == ["encoder2", "decoder1", "decoder0"]
    assert (report["threshold"], report["threshold_source"]) == (0.25, "argument")
    assert report["window"]["size_zyx"] == [16, 16, 16] and report["window"]["count"] > 1

    result = run_cli(
        "segment",
        source,
        "--model",
        tiny_model_file,
        "--out",
        tmp_path / "b",
        "--skip-heads",
        "4",
        "--quiet",
        "--window",
        "32,32,32",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "b" / "case_report.json").read_text())
    assert report["heads"]["kept"] == ["decoder0", "final"] and len(report["aula"]["curves"]["union"]) == 1

    result = run_cli("segment", source, "--model", tiny_model_file, "--out", tmp_path / "c", "--heads", "3:9")
    assert result.returncode == 2 and "head range 3:9" in result.stderr
    assert not (tmp_path / "c").exists()


def test_a_dicom_series_folder_is_one_case(tmp_path, intensity_model):
    image, _ = sphere_image(size=(24, 24, 12), radius_mm=5.0, value=400.0, noise=5.0)
    series = tmp_path / "series_T1"
    write_dicom_series(
        series, sitk.GetArrayFromImage(image), "1.2.826.0.1.3680043.2.1125.7", spacing=(1.0, 1.0, 1.0)
    )
    out = tmp_path / "out"
    result = run_cli("segment", series, "--model", intensity_model, "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr
    segmentation = sitk.ReadImage(str(out / "series_T1_seg.nii.gz"))
    assert segmentation.GetSize() == (24, 24, 12)
    assert sitk.GetArrayFromImage(segmentation).sum() > 100


def test_a_finished_case_is_skipped_and_overwrite_replaces_it(tmp_path, intensity_model):
    image, _ = sphere_image()
    source = tmp_path / "case.nii.gz"
    sitk.WriteImage(image, str(source))
    out = tmp_path / "out"
    assert run_cli("segment", source, "--model", intensity_model, "--out", out, "--quiet").returncode == 0
    report = out / "case_report.json"
    before = report.read_bytes()
    result = run_cli("segment", source, "--model", intensity_model, "--out", out, "--threshold", "0.1")
    assert result.returncode == 0, result.stderr
    assert "case: done earlier" in result.stderr and not error_lines(result.stderr)
    assert report.read_bytes() == before  # the finished case was not recomputed
    result = run_cli(
        "segment",
        source,
        "--model",
        intensity_model,
        "--out",
        out,
        "--quiet",
        "--threshold",
        "0.1",
        "--overwrite",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(report.read_text())["threshold"] == 0.1


def test_realistic_case_on_hippocampus_data(tmp_path, hippocampus_dir, tiny_model_file):
    images = sorted((hippocampus_dir / "imagesTr").glob("*.nii.gz"))[:3]
    assert len(images) == 3
    out = tmp_path / "out"
    # a whole-volume window keeps this test quick on two shared cores; sliding windows are tested elsewhere
    result = run_cli(
        "segment",
        *images,
        "--model",
        tiny_model_file,
        "--out",
        out,
        "--maps",
        "agreement,entropy",
        "--window",
        "64,64,64",
    )
    assert result.returncode == 0, result.stderr
    for path in images:
        case = path.name[: -len(".nii.gz")]
        original = sitk.ReadImage(str(path))
        for suffix in ("seg", "agreement", "entropy"):
            assert same_grid(sitk.ReadImage(str(out / f"{case}_{suffix}.nii.gz")), original)
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:  # the summary repeats each report's score and decision
        report = json.loads((out / f"{row['case']}_report.json").read_text())
        assert float(row["aula_normalized"]) == pytest.approx(report["score"], abs=1e-12)
        assert row["decision"] == report["decision"]
    assert len(rows) == 3 and [float(r["aula_normalized"]) for r in rows] == sorted(
        float(r["aula_normalized"]) for r in rows
    )

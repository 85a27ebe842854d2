"""The README's main job: `layer-ensembles demo` on the MNI152 template that nilearn ships."""

from __future__ import annotations

import json

import pytest
import SimpleITK as sitk
from cli_runner import run_cli
from conftest import make_tiny_model
from LayerEnsemblesLib.commands.demo import DEMO_MODEL, crop_around

pytest.importorskip("nilearn")


def _run_demo(model, out, *extra):
    return run_cli("demo", "--model", model, "--out", out, "--device", "cpu", *extra, timeout=600)


def test_crop_is_centred_on_the_ras_point():
    image = sitk.Image(60, 70, 50, sitk.sitkUInt8)
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # LPS grid of the MNI template
    image.SetOrigin((30.0, 35.0, -25.0))
    crop = crop_around(image, (-4.0, 5.0, 3.0), (10, 12, 8))
    assert crop.GetSize() == (10, 12, 8)
    centre_index = [(s - 1) / 2 for s in crop.GetSize()]
    centre_lps = crop.TransformContinuousIndexToPhysicalPoint(centre_index)
    assert centre_lps == pytest.approx((4.0, -5.0, 3.0), abs=1.0)


def test_demo_writes_both_hippocampi_and_reports(tmp_path):
    model = make_tiny_model(tmp_path / "tiny.pt")
    result = _run_demo(model, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    for side in ("left", "right"):
        case = f"mni152_{side}_hippocampus"
        crop = sitk.ReadImage(str(tmp_path / "out" / "inputs" / f"{case}.nii.gz"))
        seg = sitk.ReadImage(str(tmp_path / "out" / f"{case}_seg.nii.gz"))
        assert seg.GetSize() == crop.GetSize() == (36, 50, 36)
        assert seg.GetOrigin() == pytest.approx(crop.GetOrigin())
        report = json.loads((tmp_path / "out" / f"{case}_report.json").read_text())
        # the decision follows the rule from the reported score, threshold and empty flag
        accepted = not report["aula"]["empty_foreground"] and report["score"] >= report["threshold"]
        assert report["decision"] == ("accepted" if accepted else "flagged")
        assert (report["threshold"], report["threshold_source"]) == (0.9, "default")
        assert f"{case}: AULA" in result.stdout
    assert (tmp_path / "out" / "summary.csv").is_file()
    # a second run refuses to overwrite without the flag, and leaves the outputs in place
    again = _run_demo(model, tmp_path / "out")
    assert again.returncode != 0 and "already exists" in again.stderr
    assert _run_demo(model, tmp_path / "out", "--overwrite").returncode == 0


@pytest.mark.skipif(not DEMO_MODEL.is_file(), reason="the demo model is not shipped yet")
def test_shipped_demo_model_finds_both_hippocampi(tmp_path):
    result = _run_demo(DEMO_MODEL, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    for side in ("left", "right"):
        seg = sitk.GetArrayFromImage(
            sitk.ReadImage(str(tmp_path / "out" / f"mni152_{side}_hippocampus_seg.nii.gz"))
        )
        # both structures found, each of plausible volume (a hippocampus is roughly 3-5 ml at 1 mm)
        for label in (1, 2):
            assert 500 < (seg == label).sum() < 5000

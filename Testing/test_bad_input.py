"""Bad input through the real CLI: one error line naming the file, no output for that case, others go on.

All bad images run in ONE ``layer-ensembles segment`` call together with a good one (the CLI carries
on after a failing case), and each bad input is then checked by its own test. NaN and infinity are
written as NRRD/MetaImage: ITK's NIfTI reader silently turns them into zeros.
"""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from cli_runner import run_cli
from engine_models import error_lines, export_intensity_model, sphere_image, write_dicom_series
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.inference import Predictor

BAD_INPUTS = {
    "four_d.nii.gz": "a 4D image, but the model",
    "vector.nrrd": "3 component(s) per voxel",
    "nan_voxels.nrrd": "voxels are NaN or infinite",
    "inf_voxels.mha": "voxels are NaN or infinite",
    "constant.nii.gz": "constant image",
    "empty.nii.gz": "empty file",
    "thin.nii.gz": "smaller than the network's size divisor",
    "anisotropic.nii.gz": "extreme anisotropy",
    "not_an_image.nii.gz": "unreadable or truncated image",
    "truncated.nii.gz": "truncated file",
    "truncated_nrrd.nrrd": "unreadable or truncated image",
    "two_series": "folder holds 2 DICOM series",
    "missing.nii.gz": "file not found",
}


def write_bad_inputs(folder):
    good, _ = sphere_image()
    sitk.WriteImage(good, str(folder / "good.nii.gz"))
    sitk.WriteImage(sitk.JoinSeries([good, good]), str(folder / "four_d.nii.gz"))
    sitk.WriteImage(sitk.Compose([good, good, good]), str(folder / "vector.nrrd"))
    for name, value in [("nan_voxels.nrrd", np.nan), ("inf_voxels.mha", np.inf)]:
        array = sitk.GetArrayFromImage(good)
        array[3, 4, 5] = value
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(good)
        sitk.WriteImage(image, str(folder / name))
    sitk.WriteImage(sitk.Image(24, 24, 24, sitk.sitkInt16), str(folder / "constant.nii.gz"))
    (folder / "empty.nii.gz").write_bytes(b"")
    sitk.WriteImage(
        sitk.GetImageFromArray(np.random.default_rng(0).random((2, 30, 30), np.float32)),
        str(folder / "thin.nii.gz"),
    )
    anisotropic = sitk.GetImageFromArray(np.random.default_rng(1).random((6, 40, 40), np.float32))
    anisotropic.SetSpacing((0.5, 0.5, 10.0))
    sitk.WriteImage(anisotropic, str(folder / "anisotropic.nii.gz"))
    (folder / "not_an_image.nii.gz").write_text("this is not an image")
    for suffix in ("nii.gz", "nrrd"):
        sitk.WriteImage(good, str(folder / f"whole.{suffix}"), useCompression=True)
        data = (folder / f"whole.{suffix}").read_bytes()
        (folder / ("truncated.nii.gz" if suffix == "nii.gz" else "truncated_nrrd.nrrd")).write_bytes(
            data[: len(data) // 2]
        )
        (folder / f"whole.{suffix}").unlink()
    volume = (np.random.default_rng(2).random((4, 12, 12)) * 100).astype(np.int16)
    write_dicom_series(folder / "two_series", volume, "1.2.826.0.1.3680043.2.1125.31")
    write_dicom_series(folder / "two_series", volume + 5, "1.2.826.0.1.3680043.2.1125.32")


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_inputs")
    write_bad_inputs(folder)
    model = export_intensity_model(folder / "model.pt")
    inputs = [folder / "good.nii.gz", *[folder / name for name in BAD_INPUTS]]
    out = folder / "out"
    result = run_cli("segment", *inputs, "--model", model, "--out", out, "--quiet")
    return folder, out, result


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_each_bad_input_gets_one_line_naming_it(one_run, name):
    folder, out, result = one_run
    lines = [line for line in error_lines(result.stderr) if line.startswith(f"error: {folder / name}:")]
    assert len(lines) == 1, result.stderr
    assert BAD_INPUTS[name] in lines[0]
    case = name.split(".")[0]
    assert not list(out.glob(f"{case}_*")), f"{name} left outputs behind"


def test_the_good_case_still_runs_and_the_exit_code_reports_failures(one_run):
    folder, out, result = one_run
    assert result.returncode == 2
    assert len(error_lines(result.stderr)) == len(BAD_INPUTS)
    assert (out / "good_seg.nii.gz").is_file() and (out / "good_report.json").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 1 + len(BAD_INPUTS) and ",ok," in summary[1]


def test_model_with_other_channels_than_the_input(tmp_path):
    image, _ = sphere_image()
    sitk.WriteImage(image, str(tmp_path / "scalar.nii.gz"))
    model = export_intensity_model(tmp_path / "two_channels.pt", in_channels=2)
    result = run_cli(
        "segment", tmp_path / "scalar.nii.gz", "--model", model, "--out", tmp_path / "out", "--quiet"
    )
    assert result.returncode == 2
    (line,) = error_lines(result.stderr)
    assert str(tmp_path / "scalar.nii.gz") in line and "expects 2 channel(s)" in line
    assert not list((tmp_path / "out").glob("scalar*")) if (tmp_path / "out").exists() else True


def test_a_2d_image_for_a_3d_model(tmp_path):
    picture = sitk.GetImageFromArray((np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8))
    sitk.WriteImage(picture, str(tmp_path / "photo.png"))
    model = export_intensity_model(tmp_path / "model.pt")
    result = run_cli(
        "segment", tmp_path / "photo.png", "--model", model, "--out", tmp_path / "out", "--quiet"
    )
    assert result.returncode == 2
    (line,) = error_lines(result.stderr)
    assert str(tmp_path / "photo.png") in line and "a 2D image" in line and "3D volumes" in line


@pytest.mark.parametrize("kind", ["pickle", "state_dict", "truncated_archive", "not_a_model"])
def test_files_that_are_not_models(tmp_path, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
        expected = "a pickle file"
    elif kind == "state_dict":
        torch.save({"conv.weight": torch.zeros(2, 2)}, path)
        expected = "torch.save checkpoint"
    elif kind == "truncated_archive":
        whole = export_intensity_model(tmp_path / "whole.pt")
        path.write_bytes(whole.read_bytes()[:2000])
        expected = "corrupt"
    else:
        path.write_text("weights")
        expected = "not a TorchScript archive"
    image, _ = sphere_image()
    sitk.WriteImage(image, str(tmp_path / "case.nii.gz"))
    result = run_cli("segment", tmp_path / "case.nii.gz", "--model", path, "--out", tmp_path / "out")
    assert result.returncode == 2
    (line,) = error_lines(result.stderr)
    assert line.startswith(f"error: {path}:") and expected in line
    assert not (tmp_path / "out").exists()


def test_archive_without_our_metadata(tmp_path):
    scripted = torch.jit.script(torch.nn.Conv3d(1, 2, 1))
    path = tmp_path / "plain_torchscript.pt"
    torch.jit.save(scripted, str(path))
    with pytest.raises(InputError, match="without layer-ensembles metadata"):
        Predictor(path, device="cpu")


def test_summary_file_is_protected_too(tmp_path):
    image, _ = sphere_image()
    for name in ("a", "b"):
        sitk.WriteImage(image, str(tmp_path / f"{name}.nii.gz"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.csv").write_text("previous run\n")
    model = export_intensity_model(tmp_path / "model.pt")
    result = run_cli("segment", tmp_path / "a.nii.gz", tmp_path / "b.nii.gz", "--model", model, "--out", out)
    assert result.returncode == 2 and "summary.csv: already exists" in result.stderr
    assert (out / "summary.csv").read_text() == "previous run\n"
    shutil.rmtree(out)

"""A DICOM series is read only when every slice is there, readable and evenly spaced.

GDCM leaves out slices it cannot parse and ITK stacks the rest with one spacing, so without these
checks a damaged or missing slice shifts the anatomy after it and changes the spacing without a word.
"""

from __future__ import annotations

import locale
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cli_runner import run_cli
from engine_models import error_lines, export_intensity_model, write_dicom_series
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.fileio import read_image

UID = "1.2.826.0.1.3680043.2.1125.9"


def volume() -> np.ndarray:
    return (np.random.default_rng(0).random((8, 10, 12)) * 500).astype(np.int16)


def write_slices_at(folder: Path, array: np.ndarray, positions: list[float]) -> None:
    """One slice per position (z in mm), with the tags a reader needs."""
    folder.mkdir(parents=True)
    saved = locale.setlocale(locale.LC_ALL)  # GDCM's writer switches the process to the C locale
    try:
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for index, z in enumerate(positions):
            image = sitk.GetImageFromArray(array[index])
            tags = {
                "0008|0060": "MR", "0010|0010": "Test^Patient", "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
                "0020|000e": UID, "0020|0013": str(index + 1), "0020|0032": f"0\\0\\{z:.4f}",
                "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": "1\\1", "0008|0018": f"{UID}.{index + 1}",
            }  # fmt: skip
            for tag, value in tags.items():
                image.SetMetaData(tag, value)
            writer.SetFileName(str(folder / f"slice_{index:03d}.dcm"))
            writer.Execute(image)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


@pytest.fixture
def series(tmp_path) -> Path:
    folder = tmp_path / "series"
    write_dicom_series(folder, volume(), UID, spacing=(1.0, 1.0, 2.0))
    return folder


def slice_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def test_a_complete_series_reads_with_its_spacing(series):
    image = read_image(series)
    assert image.GetSize() == (12, 10, 8) and image.GetSpacing() == pytest.approx((1.0, 1.0, 2.0))
    assert np.array_equal(sitk.GetArrayFromImage(image), volume())


def test_a_missing_middle_slice_is_refused(series):
    slice_files(series)[3].unlink()
    with pytest.raises(InputError, match=r"not evenly spaced \(a gap of 4 mm where the spacing is 2 mm"):
        read_image(series)


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(path.read_bytes()[:300]),  # truncated
        lambda path: path.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64),  # a DICOM preamble, then garbage
        lambda path: path.write_bytes(b""),  # empty
    ],
)
def test_an_unreadable_slice_is_refused_not_dropped(series, damage):
    damage(slice_files(series)[4])
    with pytest.raises(InputError, match=r"slice \S+_004\.dcm is unreadable"):
        read_image(series)


def test_unevenly_spaced_slices_are_refused(tmp_path):
    folder = tmp_path / "uneven"
    write_slices_at(folder, volume(), [0.0, 2.0, 4.0, 6.0, 8.5, 10.5, 12.5, 14.5])
    with pytest.raises(InputError, match="not evenly spaced"):
        read_image(folder)


def test_a_repeated_slice_position_is_refused(tmp_path):
    folder = tmp_path / "repeated"
    write_slices_at(folder, volume(), [0.0, 2.0, 4.0, 4.0, 6.0, 8.0, 10.0, 12.0])
    with pytest.raises(InputError, match="share one position"):
        read_image(folder)


def test_segment_refuses_a_series_with_a_missing_slice_in_one_line(series, tmp_path):
    model = export_intensity_model(tmp_path / "intensity.pt", offsets=[0.0, 0.1, 0.2, 0.1, 0.0])
    broken = tmp_path / "series_T1"
    shutil.copytree(series, broken)
    slice_files(broken)[2].unlink()
    out = tmp_path / "out"
    result = run_cli("segment", broken, "--model", model, "--out", out, "--quiet")
    assert result.returncode == 2
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "series_T1: slices are not evenly spaced" in errors[0]
    assert not out.exists() or not any(out.iterdir())

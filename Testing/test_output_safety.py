"""Nothing lost, nothing half-written: a full disk during a case's writes leaves the folder as it was.

A small tmpfs is a real full disk (root mounts one here and in CI); the tests skip with a reason
elsewhere. ITK's NIfTI writer only prints a short write on stderr, so these tests fail when files are
not read back before their rename.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cli_runner import run_cli
from engine_models import error_lines, export_intensity_model, sphere_image
from LayerEnsemblesLib.errors import InputError


@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs of a chosen size at a fresh folder; unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root (it is available in CI)")
    mounted: list[Path] = []

    def mount(size_bytes: int) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        size = max(4096, (size_bytes + 4095) // 4096 * 4096)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture(scope="module")
def intensity_model(tmp_path_factory):
    return export_intensity_model(
        tmp_path_factory.mktemp("models") / "intensity.pt", offsets=[0.0, 0.1, 0.2, 0.1, 0.0]
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def noisy_image(shape=(24, 40, 40), seed=0) -> sitk.Image:
    return sitk.GetImageFromArray(np.random.default_rng(seed).random(shape).astype(np.float32))


@pytest.mark.parametrize("extension", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_a_set_that_does_not_fit_leaves_the_folder_as_it_was(small_disk, extension):
    from LayerEnsemblesLib.fileio import image_output, text_output, write_outputs

    disk = small_disk(120_000)
    old = disk / "old.txt"
    old.write_text("previous run\n")
    small = noisy_image((4, 8, 8))
    big = noisy_image((24, 40, 40))  # 150 kB of incompressible floats: more than the disk holds
    with pytest.raises(InputError) as caught:
        write_outputs(
            [
                (disk / f"seg{extension}", image_output(small)),
                (disk / f"probabilities{extension}", image_output(big)),
                (disk / "report.json", text_output("{}")),
                (old, text_output("new run\n")),
            ],
            overwrite=True,
        )
    message = str(caught.value)
    assert "\n" not in message and f"probabilities{extension}" in message and "disk full" in message
    assert snapshot(disk) == {"old.txt": b"previous run\n"}  # no new file, no temporary, old one intact


def test_a_text_output_that_does_not_fit_is_refused(small_disk):
    from LayerEnsemblesLib.fileio import text_output, write_outputs

    disk = small_disk(8192)
    with pytest.raises(InputError, match="disk full"):
        write_outputs([(disk / "summary.csv", text_output("x" * 40_000))])
    assert list(disk.iterdir()) == []


@pytest.mark.parametrize("fmt", ["nii.gz", "nrrd", "mha"])
def test_segment_on_a_full_disk_keeps_the_previous_case_intact(tmp_path, small_disk, intensity_model, fmt):
    image, _ = sphere_image(size=(40, 40, 24), noise=30.0)
    source = tmp_path / "case.nii.gz"
    sitk.WriteImage(image, str(source))
    first = tmp_path / "first"
    result = run_cli(
        "segment", source, "--model", intensity_model, "--out", first, "--quiet", "--format", fmt
    )
    assert result.returncode == 0, result.stderr
    old_size = sum(p.stat().st_size for p in first.iterdir())
    # room for the old files and a second copy of them, not for the probabilities as well
    disk = small_disk(2 * old_size + 24_000)
    for path in first.iterdir():
        shutil.copy(path, disk / path.name)
    before = snapshot(disk)
    result = run_cli(
        "segment", source, "--model", intensity_model, "--out", disk, "--quiet", "--format", fmt,
        "--probabilities", "--maps", "all", "--threshold", "0.2", "--overwrite",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "disk full" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(disk) == before
    assert json.loads((disk / "case_report.json").read_text())["threshold"] != 0.2

    fresh = small_disk(2 * old_size + 24_000)
    result = run_cli(
        "segment", source, "--model", intensity_model, "--out", fresh, "--quiet", "--format", fmt,
        "--probabilities", "--maps", "all",
    )  # fmt: skip
    assert result.returncode == 2 and "disk full" in result.stderr
    assert list(fresh.iterdir()) == []  # no report of an incomplete case, no stray file


def test_a_torch_archive_that_does_not_fit_is_refused(small_disk):
    import torch
    from LayerEnsemblesLib.fileio import write_outputs, zip_output

    disk = small_disk(64 * 1024)

    def write(path: Path) -> None:
        with open(path, "wb") as handle:
            torch.save({"logits": torch.rand(64, 64, 16)}, handle)  # 256 kB

    with pytest.raises(InputError, match="disk full"):
        write_outputs([(disk / "case_heads.pt", zip_output(write))])
    assert list(disk.iterdir()) == []

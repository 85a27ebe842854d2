"""``layer-ensembles train`` and ``export`` as a user runs them, and their one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from cli_runner import run_cli
from LayerEnsemblesLib import cli
from LayerEnsemblesLib.contract import load_model
from training_data import to_image, write_blob_dataset

TINY = [
    "--depth",
    "3",
    "--base-channels",
    "4",
    "--epochs",
    "1",
    "--iterations",
    "1",
    "--threads",
    "1",
    "--quiet",
]


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def blob_dataset(tmp_path_factory):
    return write_blob_dataset(tmp_path_factory.mktemp("blobs"), cases=6)


def test_train_then_export_then_info(blob_dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    result = run_cli(
        "train",
        "--dataset",
        str(blob_dataset),
        "--out",
        str(run_dir),
        *TINY,
        "--head-weights",
        "linear",
        "--target-spacing",
        "1,1,1",
        "--name",
        "blobs-cli",
    )
    assert result.returncode == 0, result.stderr
    assert f"model: {run_dir / 'model.pt'}" in result.stdout
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["head_weights"] == "linear" and config["target_spacing"] == [1.0, 1.0, 1.0]
    assert load_model(run_dir / "model.pt")[1].name == "blobs-cli"

    exported = tmp_path / "exported.pt"
    assert (
        cli.main(
            [
                "export",
                str(run_dir),
                "--checkpoint",
                "last",
                "--out",
                str(exported),
                "--skip-heads",
                "1",
                "--name",
                "renamed",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == str(exported)
    assert cli.main(["info", str(exported)]) == 0
    shown = capsys.readouterr().out
    assert "renamed" in shown and "skip the first 1" in shown and "dim blob" in shown
    # a second export to the same file needs --overwrite
    assert cli.main(["export", str(run_dir), "--out", str(exported)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_missing_dataset_json_is_one_line(tmp_path):
    result = run_cli(
        "train", "--dataset", str(tmp_path / "nowhere" / "dataset.json"), "--out", str(tmp_path / "r"), *TINY
    )
    assert_one_line_error(result, "nowhere/dataset.json", "not found")
    assert not (tmp_path / "r" / "config.json").exists()


def test_label_outside_the_declared_classes_is_one_line(tmp_path):
    dataset = write_blob_dataset(tmp_path / "data", cases=4)
    label_path = tmp_path / "data" / "labelsTr" / "blob_002.nii.gz"
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
    label[0, 0, 0] = 4
    sitk.WriteImage(to_image(label), str(label_path))
    result = run_cli(
        "train", "--dataset", str(dataset), "--out", str(tmp_path / "r"), *TINY, "--validation-fraction", "0"
    )
    assert_one_line_error(
        result, str(label_path), "label values [4] are outside the declared classes [0, 1, 2]"
    )


def test_run_folder_with_a_run_is_refused_in_one_line(blob_dataset, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    result = run_cli("train", "--dataset", str(blob_dataset), "--out", str(run_dir), *TINY)
    assert_one_line_error(result, str(run_dir), "already holds a training run", "--resume", "--overwrite")
    assert (run_dir / "config.json").read_text() == "{}"


def test_geometry_mismatch_in_folder_mode_is_one_line(tmp_path, capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        label = np.zeros((8, 8, 8), np.uint8)
        label[2:5, 2:5, 2:5] = 1
        sitk.WriteImage(
            to_image(rng.normal(size=(8, 8, 8)).astype(np.float32)), str(images / f"c{index}.mha")
        )
        sitk.WriteImage(
            to_image(label, spacing=(1.0, 1.0, 1.5 if index == 1 else 1.0)), str(labels / f"c{index}.mha")
        )
    code = cli.main(
        ["train", "--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "r"), *TINY]
    )
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.count("\n") == 0
    assert str(labels / "c1.mha") in error and "label geometry differs" in error


def test_export_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path), "--out", str(tmp_path / "m.pt")]) == 2
    assert "not a training run folder" in capsys.readouterr().err


def test_resume_and_overwrite_together_are_refused(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path), "--resume", "--overwrite"]) == 2
    assert "--resume or --overwrite" in capsys.readouterr().err

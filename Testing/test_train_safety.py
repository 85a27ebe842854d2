"""``train`` never loses a run to bad input: validated options, ``--overwrite`` that restores the old
run when the new one cannot start, and damaged bookkeeping refused on ``--resume`` with the folder intact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk
from LayerEnsemblesLib import cli
from training_data import to_image, write_blob_dataset

TINY = ["--depth", "3", "--base-channels", "4", "--iterations", "1", "--threads", "1", "--quiet"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def blob_dataset(tmp_path_factory):
    return write_blob_dataset(tmp_path_factory.mktemp("blobs"), cases=4)


@pytest.fixture(scope="module")
def trained_run(blob_dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    code = cli.main(["train", "--dataset", str(blob_dataset), "--out", str(run_dir), "--epochs", "1", *TINY])
    assert code == 0
    return run_dir


@pytest.fixture
def run_copy(trained_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--epochs", "0", "epochs must be at least 1"),
        ("--epochs", "-3", "epochs must be at least 1"),
        ("--lr", "nan", "lr must be a finite number"),
        ("--lr", "inf", "lr must be a finite number"),
        ("--lr", "0", "lr must be positive"),
        ("--weight-decay", "nan", "weight_decay must be a finite number"),
        ("--weight-decay", "-1", "weight_decay must be at least 0"),
        ("--dropout", "nan", "dropout must be a finite number"),
        ("--foreground-probability", "nan", "foreground_probability must be a finite number"),
        ("--validation-fraction", "nan", "validation_fraction must be a finite number"),
        ("--batch-size", "0", "batch_size must be at least 1"),
        ("--threads", "0", "threads must be at least 1"),
        ("--target-spacing", "1,nan,1", "target_spacing"),
        ("--head-weights", "1,nan,1,1,1,1", "must be finite"),
    ],
)
def test_bad_hyper_parameters_are_refused_not_defaulted(
    blob_dataset, tmp_path, capsys, option, value, message
):
    out = tmp_path / "r"
    arguments = ["train", "--dataset", str(blob_dataset), "--out", str(out), *TINY, "--epochs", "1"]
    code = cli.main([*arguments, option, value])
    assert code == 2
    assert message in one_line_error(capsys)
    assert not out.exists() or not any(out.iterdir())


def test_a_failed_overwrite_leaves_the_old_run_intact(trained_run, run_copy, blob_dataset, tmp_path, capsys):
    before = snapshot(run_copy)
    bad_label = tmp_path / "bad"
    shutil.copytree(blob_dataset.parent, bad_label)
    label_path = bad_label / "labelsTr" / "blob_002.nii.gz"
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
    label[0, 0, 0] = 9  # found only while preprocessing, after the old run would have been deleted
    sitk.WriteImage(to_image(label), str(label_path))
    attempts = [
        (["--dataset", str(tmp_path / "nowhere" / "dataset.json")], "not found"),
        (["--dataset", str(bad_label / "dataset.json"), "--validation-fraction", "0"], "label values [9]"),
        (["--dataset", str(blob_dataset), "--epochs", "0"], "epochs must be at least 1"),
        (["--dataset", str(blob_dataset), "--lr", "nan"], "lr must be a finite number"),
    ]
    for arguments, message in attempts:
        code = cli.main(["train", "--out", str(run_copy), "--overwrite", *TINY, "--epochs", "1", *arguments])
        assert code == 2, arguments
        assert message in one_line_error(capsys)
        assert snapshot(run_copy) == before, arguments  # nothing lost, nothing left behind
    # a new run that starts does replace the old one
    code = cli.main(
        ["train", "--dataset", str(blob_dataset), "--out", str(run_copy), "--overwrite", *TINY,
         "--epochs", "1", "--lr", "0.002"]
    )  # fmt: skip
    assert code == 0
    assert json.loads((run_copy / "config.json").read_text())["config"]["lr"] == 0.002
    assert not (run_copy / ".replaced-run").exists()


def _half_written_metrics(run_dir: Path) -> None:
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"epoch": 2, "train_loss": 0.5')


def _truncated_split(run_dir: Path) -> None:
    text = (run_dir / "split.json").read_text()
    (run_dir / "split.json").write_text(text[: len(text) // 2])


def _split_as_a_list(run_dir: Path) -> None:
    (run_dir / "split.json").write_text('["blob_000", "blob_001"]')


def _nan_in_config(run_dir: Path) -> None:
    document = json.loads((run_dir / "config.json").read_text())
    document["config"]["lr"] = float("nan")  # json writes NaN, which Python reads back as nan
    (run_dir / "config.json").write_text(json.dumps(document))


def _text_in_config(run_dir: Path) -> None:
    document = json.loads((run_dir / "config.json").read_text())
    document["config"]["batch_size"] = "2"
    (run_dir / "config.json").write_text(json.dumps(document))


@pytest.mark.parametrize(
    "damage, message",
    [
        (_half_written_metrics, "metrics.jsonl: line 2 is damaged"),
        (_truncated_split, "split.json: damaged or truncated"),
        (_split_as_a_list, "split.json: not a split"),
        (_nan_in_config, "lr must be a finite number"),
        (_text_in_config, "batch_size must be an integer"),
    ],
)
def test_damaged_bookkeeping_on_resume_is_one_line_and_changes_nothing(run_copy, capsys, damage, message):
    damage(run_copy)
    before = snapshot(run_copy)
    code = cli.main(["train", "--out", str(run_copy), "--resume", "--epochs", "2", "--quiet"])
    assert code == 2
    assert message in one_line_error(capsys)
    assert snapshot(run_copy) == before


def test_resume_with_zero_or_nan_epochs_is_refused(run_copy, capsys):
    before = snapshot(run_copy)
    assert cli.main(["train", "--out", str(run_copy), "--resume", "--epochs", "0", "--quiet"]) == 2
    assert "epochs must be at least 1" in one_line_error(capsys)
    assert snapshot(run_copy) == before

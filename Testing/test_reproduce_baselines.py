"""The baseline trainings of ``Testing/reproduce_evaluation.py`` split over processes and sessions:
``--train-only`` trains the named runs and stops; a run interrupted before its model file resumes from
its last checkpoint instead of starting again. Real (tiny) trainings on a synthetic dataset."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from training_data import tiny_config, write_blob_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reproduce_evaluation  # noqa: E402


@pytest.fixture(scope="module")
def le_run(tmp_path_factory):
    from LayerEnsemblesLib.training import train

    root = tmp_path_factory.mktemp("reproduce")
    dataset = write_blob_dataset(root / "blobs", cases=8)
    run = root / "le"
    train(tiny_config(dataset, run, epochs=1), progress=False)
    return dataset, run


def epochs_logged(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines if line.strip()]


def arguments(dataset: Path, le: Path, work: Path, *extra: str) -> list[str]:
    return ["--le-run", str(le), "--le-model", str(le / "model.pt"), "--dataset", str(dataset),
            "--work", str(work), "--out", str(work / "report"), "--device", "cpu", *extra]  # fmt: skip


def test_train_only_trains_the_named_runs_and_an_interrupted_one_resumes(le_run, tmp_path, capsys):
    dataset, le = le_run
    work = tmp_path / "baselines"
    assert (
        reproduce_evaluation.main(
            arguments(dataset, le, work, "--epochs", "1", "--train-only", "plain-seed1")
        )
        == 0
    )
    assert sorted(p.name for p in work.iterdir()) == ["plain-seed1"]  # nothing else trained, no evaluation
    member = work / "plain-seed1"
    assert (member / "model.pt").is_file() and epochs_logged(member) == [1]
    split = json.loads((member / "split.json").read_text())["validation"]
    assert split == json.loads((le / "split.json").read_text())["validation"]  # the LE's held-out cases

    # As if the session had ended before the run wrote its model file: it goes on from its checkpoint.
    (member / "model.pt").unlink()
    assert (
        reproduce_evaluation.main(
            arguments(dataset, le, work, "--epochs", "2", "--train-only", "plain-seed1")
        )
        == 0
    )
    assert "resuming plain-seed1" in capsys.readouterr().out
    assert (member / "model.pt").is_file() and epochs_logged(member) == [
        1,
        2,
    ]  # epoch 1 was not trained again

    assert reproduce_evaluation.main(arguments(dataset, le, work, "--train-only", "plain-seed1")) == 0
    assert "reusing" in capsys.readouterr().out  # a finished run is never trained again


def test_train_only_refuses_an_unknown_run(le_run, tmp_path):
    dataset, le = le_run
    with pytest.raises(SystemExit, match="unknown run.*plain-seed9.*choose from plain-seed0"):
        reproduce_evaluation.main(arguments(dataset, le, tmp_path / "work", "--train-only", "plain-seed9"))

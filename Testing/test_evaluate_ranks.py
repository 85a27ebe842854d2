"""``evaluate`` on torchrun: two gloo ranks write the tables of one process; a killed rank, then --resume."""

from __future__ import annotations

import csv
import json

import pytest
from cli_runner import run_cli
from conftest import make_tiny_model
from LayerEnsemblesLib.commands.manifest import balance, voxel_count
from synthetic_dataset import write_synthetic_dataset
from test_segment_archive import _torchrun

TIMING_COLUMNS = {"time_s", "forward_s"}  # wall-clock measurements: the only columns that may differ


def _rows(path):
    with open(path, encoding="utf-8", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluation")
    dataset = write_synthetic_dataset(folder / "data", count=5)
    model = make_tiny_model(folder / "le.pt", seed=0, patch_size=[32, 32, 32])
    arguments = ["evaluate", "--model", f"LE={model}", "--dataset", str(dataset), "--shifts", "noise",
                 "--severities", "3", "--device", "cpu", "--no-progress", "--no-cost-probe"]  # fmt: skip
    single = folder / "single"
    result = run_cli(*arguments, "--out", single, timeout=600)
    assert result.returncode == 0, result.stderr
    return folder, dataset, arguments, single


def test_two_gloo_ranks_write_the_tables_of_one_process(evaluation):
    folder, _, arguments, single = evaluation
    out = folder / "ranks"
    result = _torchrun([*arguments, "--out", str(out)], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote ") == 1 and "on 2 ranks" in result.stderr
    for table in ("cases.csv", "heads.csv"):
        assert _rows(out / table) == _rows(single / table), table
    assert (out / "report.md").is_file() and not list(out.glob(".*.rank*.csv"))
    run = json.loads((out / "run.json").read_text())
    assert run["cases"] == json.loads((single / "run.json").read_text())["cases"]


def test_a_killed_rank_is_reported_and_resume_completes(evaluation):
    folder, dataset, arguments, single = evaluation
    out = folder / "killed"
    images = [folder / "data" / entry["image"] for entry in json.loads(dataset.read_text())["training"]]
    rank1 = [images[i].name.split(".")[0] for i in balance([voxel_count(p) for p in images], 2)[1]]
    assert len(rank1) >= 2
    result = _torchrun([*arguments, "--out", str(out)], fault="1:1", timeout=600)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "case(s) missing" in line]
    assert lines and "--resume" in lines[0], result.stderr[-3000:]
    assert all(case in lines[0] for case in rank1[1:])
    assert not (out / "cases.csv").exists() and (out / ".cases.rank1.csv").is_file()

    again = _torchrun([*arguments, "--out", str(out)], timeout=600)  # without --resume: refused, untouched
    assert again.returncode != 0 and "--resume" in again.stderr
    result = _torchrun([*arguments, "--out", str(out), "--resume"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    key = lambda row: (row["method"], row["case"], row["condition"])  # noqa: E731
    for table in ("cases.csv", "heads.csv"):
        assert sorted(_rows(out / table), key=key) == sorted(_rows(single / table), key=key), table
    assert not list(out.glob(".*.rank*.csv"))

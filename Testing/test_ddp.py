"""The training command under ``torchrun``: two CPU processes on the gloo backend."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from cli_runner import cli_environment
from LayerEnsemblesLib.contract import load_model
from training_data import write_blob_dataset


def test_two_gloo_processes_train_and_only_rank_zero_writes(tmp_path):
    dataset = write_blob_dataset(tmp_path / "data", cases=6)
    run_dir = tmp_path / "run"
    env = cli_environment()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "LayerEnsemblesLib.cli",
        "train",
        "--dataset",
        str(dataset),
        "--out",
        str(run_dir),
        "--depth",
        "3",
        "--base-channels",
        "4",
        "--epochs",
        "2",
        "--iterations",
        "2",
        "--device",
        "cpu",
        "--quiet",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("run: ") == 1  # only rank 0 reports

    log = (run_dir / "log.txt").read_text()
    assert "batch 2 x 2 rank(s)" in log
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # one record per epoch, not one per rank
    assert all(r["val"] is not None for r in records)
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and not any(k.startswith("module.") for k in state["model"])
    _, metadata = load_model(run_dir / "model.pt")
    assert metadata.num_heads == 6

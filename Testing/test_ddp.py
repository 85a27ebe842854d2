"""The training command under ``torchrun``: two CPU processes on the gloo backend."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
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


DIVERGING_WORKER = """
import os
import sys

from LayerEnsemblesLib.losses import DeepSupervisionLoss
from LayerEnsemblesLib.training import loop

if os.environ["RANK"] == os.environ["DIVERGING_RANK"]:  # a fault on one rank only

    class DivergingLoss(DeepSupervisionLoss):
        def forward(self, outputs, label):
            loss, per_head = super().forward(outputs, label)
            return loss * float("nan"), per_head

    loop.DeepSupervisionLoss = DivergingLoss
from LayerEnsemblesLib.cli import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("diverging_rank", ["1", "0"])
def test_a_loss_diverging_on_one_rank_stops_every_rank(tmp_path, diverging_rank):
    dataset = write_blob_dataset(tmp_path / "data", cases=6)
    worker = tmp_path / "diverging_worker.py"
    worker.write_text(DIVERGING_WORKER)
    env = cli_environment(OMP_NUM_THREADS="1", DIVERGING_RANK=diverging_rank)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(worker), "train", "--dataset", str(dataset), "--out", str(tmp_path / "run"),
               "--depth", "3", "--base-channels", "4", "--epochs", "2", "--iterations", "2",
               "--device", "cpu", "--quiet"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode != 0
    diverged = [
        line for line in result.stderr.splitlines() if line.startswith("error:") and "diverged" in line
    ]
    # both ranks stop on the same step with their one-line error (torchrun then reports both exits)
    assert len(diverged) == 2, result.stderr[-3000:]
    assert sum("another rank" in line for line in diverged) == 1

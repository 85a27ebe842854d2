#!/usr/bin/env python3
"""CPU throughput of ``segment`` over a folder: one process against two gloo ranks on torchrun.

One command, from the repository root::

    python Testing/benchmarks/run_distributed_cpu.py                 # results in benchmarks/distributed-cpu/
    python Testing/benchmarks/run_distributed_cpu.py --cases 4 --repeats 1 --out /tmp/x   # smoke run

Configurations, each a real ``layer-ensembles segment`` command over the same cases with the shipped
hippocampus model, timed from launch to exit (interpreter start, torch import and model load
included, since that is what a nightly job pays):

- ``1 process x 1 thread``: the baseline;
- ``2 gloo ranks x 1 thread``: ``torchrun --standalone --nproc_per_node 2``, cases split by size;
- ``1 process x 2 threads``: the same two cores given to torch's intra-op threads instead.

The configurations alternate within each repeat, so the drift of a shared machine falls on all of
them alike; the median over repeats is reported with every run's time. Every configuration must
write the same ``summary.csv`` (checked and recorded). Results go to ``results.json`` and
``results.md`` in ``--out``, with the load average and the CPU count at the time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
MODULE_DIR = REPOSITORY / "LayerEnsemblesSegmentation"
DEFAULT_MODEL = MODULE_DIR / "Resources" / "Models" / "hippocampus_le3d.pt"
DEFAULT_DATA = REPOSITORY.parent / "shared" / "data" / "Task04_Hippocampus_dev"
CONFIGURATIONS = {
    "1 process x 1 thread": (1, 1),
    "2 gloo ranks x 1 thread": (2, 1),
    "1 process x 2 threads": (1, 2),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="an MSD folder with imagesTr/")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="the model file")
    parser.add_argument("--cases", type=int, default=20, help="cases taken from imagesTr (default 20)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration (default 2)")
    parser.add_argument("--out", default=str(REPOSITORY / "benchmarks" / "distributed-cpu"))
    return parser.parse_args(argv)


def command_for(ranks: int, inputs: list[Path], model: str, out: Path) -> list[str]:
    segment = ["-m", "LayerEnsemblesLib.cli", "segment", *map(str, inputs), "--model", model,
               "--out", str(out), "--device", "cpu", "--quiet"]  # fmt: skip
    if ranks == 1:
        return [sys.executable, *segment]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
            *segment]  # fmt: skip


def run_once(ranks: int, threads: int, inputs: list[Path], model: str, scratch: Path) -> tuple[float, str]:
    out = scratch / f"out-{ranks}x{threads}"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(MODULE_DIR), env.get("PYTHONPATH", "")) if p)
    start = time.perf_counter()
    result = subprocess.run(command_for(ranks, inputs, model, out), env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{ranks} rank(s) x {threads} thread(s) failed:\n{result.stderr[-3000:]}")
    return seconds, (out / "summary.csv").read_text()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    inputs = sorted((Path(args.data) / "imagesTr").glob("*.nii.gz"))[: args.cases]
    if len(inputs) < 2:
        raise SystemExit(f"{args.data}: fewer than two images in imagesTr/")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {name: [] for name in CONFIGURATIONS}
    summaries: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="le-distributed-") as scratch:
        for repeat in range(args.repeats):
            for name, (ranks, threads) in CONFIGURATIONS.items():
                seconds, summary = run_once(ranks, threads, inputs, args.model, Path(scratch))
                times[name].append(seconds)
                summaries[name] = summary
                print(f"repeat {repeat + 1}: {name}: {seconds:.1f} s", flush=True)
    reference = next(iter(summaries.values()))
    document = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cases": len(inputs),
        "model": Path(args.model).name,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "torch": _torch_version(),
        "summaries_identical": all(s == reference for s in summaries.values()),
        "configurations": {},
    }
    baseline = statistics.median(times["1 process x 1 thread"])
    for name, values in times.items():
        median = statistics.median(values)
        document["configurations"][name] = {
            "ranks": CONFIGURATIONS[name][0],
            "threads_per_rank": CONFIGURATIONS[name][1],
            "seconds": [round(v, 2) for v in values],
            "median_seconds": round(median, 2),
            "cases_per_minute": round(60.0 * len(inputs) / median, 2),
            "speedup_vs_1x1": round(baseline / median, 3),
        }
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "results.md").write_text(render(document))
    print(render(document))
    return 0 if document["summaries_identical"] else 1


def render(document: dict) -> str:
    lines = [
        "# `segment` throughput on the CPU: one process against two gloo ranks",
        "",
        f"{document['cases']} hippocampus cases, model `{document['model']}`, {document['repeats']} "
        f"repeat(s), {document['cpu_count']} CPUs, torch {document['torch']}, {document['date']}. "
        f"Load average before {document['load_average_before']}, after {document['load_average_after']} "
        "(the machine is shared with other jobs: compare the rows, measured side by side, not the "
        "absolute times). Times run from launch to exit: interpreter, torch import and model load "
        "included.",
        "",
        "| configuration | runs (s) | median (s) | cases/min | speed-up vs 1 x 1 |",
        "|---|---|---|---|---|",
    ]
    for name, entry in document["configurations"].items():
        runs = ", ".join(f"{v:.1f}" for v in entry["seconds"])
        lines.append(
            f"| {name} | {runs} | {entry['median_seconds']:.1f} | {entry['cases_per_minute']:.1f} | "
            f"{entry['speedup_vs_1x1']:.2f} |"
        )
    same = "identical" if document["summaries_identical"] else "DIFFERENT (a bug)"
    lines += ["", f"`summary.csv` of every configuration: {same}.", ""]
    return "\n".join(lines)


def _torch_version() -> str:
    try:
        import torch

        return torch.__version__
    except ImportError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())

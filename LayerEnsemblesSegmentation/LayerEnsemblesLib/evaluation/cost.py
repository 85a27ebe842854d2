"""What a method costs: parameters, forward passes, time per case and peak memory.

Peak memory is measured in a fresh process per method (``python -m
LayerEnsemblesLib.evaluation.cost MODEL IMAGE``), because a process's high-water mark only grows: in
the evaluation process it would mix every method run so far. The probe reports the growth of the
resident set over the loaded model and image (``ru_maxrss`` minus the resident set before the first
prediction), and on CUDA the peak of allocated device memory during one timed prediction.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..contract import ModelMetadata, load_model

MAPS = ("entropy", "mutual_information", "variance")


def forward_passes(metadata: ModelMetadata) -> int:
    """Network evaluations per window: one for a layer ensemble (all heads at once), M or T otherwise."""
    if metadata.kind == "deep_ensemble":
        return int(metadata.members)
    if metadata.kind == "mc_dropout":
        return int(metadata.samples)
    return 1


def parameter_count(model_path: str | Path, member: int | None = None) -> int:
    """All the file's parameters; with ``member``, that member's network alone (``members.K.`` in the
    archives this library writes), which is what the member view runs."""
    module, _ = load_model(model_path)
    named = list(module.named_parameters())
    if member is not None:
        own = [p for n, p in named if n.startswith(f"members.{member}.")]
        named = [("", p) for p in own] or named
    return int(sum(p.numel() for _, p in named))


def _resident_mb() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def _max_resident_mb() -> float:
    try:
        import resource  # POSIX only
    except ImportError:
        return float("nan")
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / 2**20 if sys.platform == "darwin" else value / 1024  # bytes on macOS, KiB on Linux


def measure(
    model_path: str, image_path: str, device: str = "auto", member: int | None = None
) -> dict[str, Any]:
    """Run in a fresh process: one warm-up prediction, then one timed prediction with memory peaks."""
    import torch

    from ..fileio import read_image
    from ..inference import Predictor

    predictor = Predictor(model_path, device=device, member=member)
    image = read_image(image_path)
    baseline = _resident_mb()
    predictor.predict(image, maps=MAPS)  # warm-up: TorchScript optimises on the first calls
    cuda = predictor.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(predictor.device)
        torch.cuda.reset_peak_memory_stats(predictor.device)
    start = time.perf_counter()
    prediction = predictor.predict(image, maps=MAPS)
    _ = prediction.probabilities
    seconds = time.perf_counter() - start
    result = {
        "device": str(predictor.device),
        "seconds_warm": seconds,
        "forward_seconds_warm": float(prediction.timings.get("forward", float("nan"))),
        "peak_host_mb": max(0.0, _max_resident_mb() - baseline),
        "peak_cuda_mb": torch.cuda.max_memory_allocated(predictor.device) / 2**20 if cuda else None,
    }
    return result


def probe(
    model_path: str | Path,
    image_path: str | Path,
    device: str = "auto",
    timeout: float = 900,
    member: int | None = None,
) -> dict[str, Any]:
    """Run :func:`measure` in a child process and return its JSON (or the reason it failed)."""
    package_parent = Path(__file__).resolve().parents[2]
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(package_parent), environment.get("PYTHONPATH")])
    )
    command = [
        sys.executable,
        "-m",
        "LayerEnsemblesLib.evaluation.cost",
        str(model_path),
        str(image_path),
        "--device",
        device,
        *(["--member", str(member)] if member is not None else []),
    ]
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=environment, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"cost probe timed out after {timeout:.0f} s"}
    if completed.returncode != 0:
        lines = (completed.stderr or completed.stdout).strip().splitlines()
        return {"error": f"cost probe failed: {lines[-1] if lines else completed.returncode}"}
    try:
        return json.loads(completed.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"error": "cost probe printed no result"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure one method's time and peak memory on one image.")
    parser.add_argument("model")
    parser.add_argument("image")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--member", type=int)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.model, args.image, args.device, args.member)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

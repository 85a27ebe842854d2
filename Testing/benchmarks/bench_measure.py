"""One measurement: warm-up, timed repeats and the memory peak of one method on one input.

Timing: ``torch.cuda.Event`` pairs on the GPU, ``time.perf_counter`` on the CPU. Memory: on the GPU the
peak of ``torch.cuda.max_memory_allocated`` above what was allocated before the first call (weights
and caches are in that base); on the CPU the growth of the process's resident set above its size
before the first call. A process's high-water mark only grows, so on the CPU each measurement runs
in a fresh child process (the parent calls this module through ``run_benchmark.py --worker``), and
the mark is reset at the start where Linux allows it (``/proc/self/clear_refs``).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import SimpleITK as sitk
import torch
from bench_inputs import SizeSpec, actual_shape, input_file, load_input

ALL_MAPS = ("agreement", "entropy", "mutual_information", "variance")
BREAKDOWN_KEYS = ("preprocess", "forward", "reduce", "postprocess")


def summarize(times: list[float]) -> dict[str, Any]:
    return {
        "times_s": [round(t, 6) for t in times],
        "median_s": statistics.median(times) if times else None,
        "min_s": min(times) if times else None,
        "max_s": max(times) if times else None,
        "repeats": len(times),
    }


class Timer:
    """Elapsed seconds of a block: CUDA events on a GPU, perf_counter otherwise."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds = float("nan")

    def __enter__(self) -> Timer:
        if self.cuda:
            self._start, self._end = (
                torch.cuda.Event(enable_timing=True),
                torch.cuda.Event(enable_timing=True),
            )
            self._start.record()
        else:
            self._started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self._end.record()
            self._end.synchronize()
            self.seconds = self._start.elapsed_time(self._end) / 1000.0
        else:
            self.seconds = time.perf_counter() - self._started


def _status_mb(field: str) -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


class MemoryProbe:
    """Peak memory above a base taken at :meth:`start` (device memory on CUDA, resident set on the CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base_mb = float("nan")
        self.reset_ok = False

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base_mb = torch.cuda.memory_allocated(self.device) / 2**20
            self.reset_ok = True
            return
        try:  # "5" resets the peak resident set (VmHWM) to the current one (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")
            self.reset_ok = True
        except OSError:
            self.reset_ok = False
        self.base_mb = _status_mb("VmRSS")

    def result(self) -> dict[str, Any]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            absolute = torch.cuda.max_memory_allocated(self.device) / 2**20
            kind = "cuda_max_memory_allocated"
        else:
            absolute = _status_mb("VmHWM")
            kind = "process_peak_rss" if self.reset_ok else "process_peak_rss (not reset: includes loading)"
        return {
            "peak_mb": round(absolute - self.base_mb, 1),
            "base_mb": round(self.base_mb, 1),
            "absolute_peak_mb": round(absolute, 1),
            "memory_kind": kind,
        }


def _label_digest(image: sitk.Image) -> str:
    return hashlib.sha1(sitk.GetArrayViewFromImage(image).tobytes()).hexdigest()[:16]


def measure_predict(task: dict[str, Any], size: SizeSpec) -> dict[str, Any]:
    """Warm-up and timed ``Predictor.predict`` calls of one model on one input."""
    from LayerEnsemblesLib.inference import Predictor

    image, source = load_input(size)
    predictor = Predictor(task["model"], device=task["device"], window_size=size.window)
    maps = tuple(task["maps"])
    memory = MemoryProbe(predictor.device)
    memory.start()
    timer = Timer(predictor.device)
    for _ in range(task["warmup"]):
        prediction = predictor.predict(image, maps=maps)
        del prediction
    times: list[float] = []
    breakdown: dict[str, list[float]] = {key: [] for key in BREAKDOWN_KEYS}
    report: dict[str, Any] = {}
    digest = ""
    for _ in range(task["repeats"]):
        with timer:
            prediction = predictor.predict(image, maps=maps)
        times.append(timer.seconds)
        for key in BREAKDOWN_KEYS:
            breakdown[key].append(float(prediction.timings.get(key, float("nan"))))
        report = prediction.to_report()
        digest = _label_digest(prediction.segmentation)
        del prediction
    result = summarize(times)
    result.update(memory.result())
    result["breakdown_median_s"] = {k: statistics.median(v) for k, v in breakdown.items() if v}
    result.update(
        input=source,
        shape_zyx=list(actual_shape(image)),
        windows=report.get("window", {}).get("count"),
        window_zyx=report.get("window", {}).get("size_zyx"),
        kept_heads=len(report.get("heads", {}).get("kept", [])),
        aula_normalized=report.get("score"),
        segmentation_digest=digest,
        device=str(predictor.device),
    )
    return result


def measure_recombine(task: dict[str, Any], size: SizeSpec) -> dict[str, Any]:
    """Recombination after one forward pass, for what a viewer needs at each slider step.

    ``segmentation_step``: kept heads moved by one, segmentation and AULA only; ``agreement_step``: the
    same plus the agreement map (the CLI's default); ``heads_step``: the same with all four maps;
    ``heads_jump``: half the heads leave or enter, all maps; ``threshold``: a new threshold only.
    The session tracks only the sums its maps need, so the first two run before the all-maps ones.
    """
    from LayerEnsemblesLib.inference import Predictor

    image, source = load_input(size)
    predictor = Predictor(task["model"], device=task["device"], window_size=size.window)
    heads = len(predictor.member_names)
    # an interactive case keeps its head outputs on the compute device, so the sliders recombine there
    base = predictor.predict(image, maps=(), skip_heads=0, keep_on_device=True)
    forward_seconds = base.timings.get("total")
    memory = MemoryProbe(predictor.device)
    memory.start()
    timer = Timer(predictor.device)
    runs = task["warmup"] + task["repeats"]
    jump = heads // 2
    sections: dict[str, list[float]] = {
        name: [] for name in ("segmentation_step", "agreement_step", "heads_step", "heads_jump", "threshold")
    }

    def timed(name: str, current, index: int, **arguments):
        with timer:
            result = current.recombine(**arguments)
        if index >= task["warmup"]:
            sections[name].append(timer.seconds)
        return result

    current = base
    for name, maps in (
        ("segmentation_step", ()),
        ("agreement_step", ("agreement",)),
        ("heads_step", ALL_MAPS),
    ):
        current = current.recombine(skip_heads=0, maps=maps)  # untimed: may start the sums afresh
        for index in range(runs):  # skip 1, 2, 1, 2, ...: one head leaves or enters each time
            current = timed(name, current, index, skip_heads=1 + index % 2, maps=maps)
    current = current.recombine(skip_heads=0)
    for index in range(runs):  # skip jump, 0, jump, 0, ...: half the heads leave or enter
        current = timed("heads_jump", current, index, skip_heads=jump if index % 2 == 0 else 0)
    for index in range(runs):
        current = timed("threshold", current, index, threshold=0.5 + 0.1 * (index % 2))
    result: dict[str, Any] = {name: summarize(values) for name, values in sections.items()}
    result.update(memory.result())
    result.update(
        input=source,
        shape_zyx=list(actual_shape(image)),
        heads=heads,
        jump_heads=jump,
        first_prediction_s=forward_seconds,
        windows=base.to_report()["window"]["count"],
        device=str(predictor.device),
    )
    return result


def worker_main(task_text: str) -> int:
    """Entry of a child process: run one task given as JSON and print its result as the last line."""
    task = json.loads(task_text)
    if int(task.get("threads") or 0) > 0:
        torch.set_num_threads(int(task["threads"]))
    fields = task["size"]
    size = SizeSpec(**{**fields, "shape": tuple(fields["shape"]), "window": tuple(fields["window"])})
    if task["kind"] == "recombine":
        result = measure_recombine(task, size)
    else:
        result = measure_predict(task, size)
    print(json.dumps(result))
    return 0


def run_isolated(task: dict[str, Any], script: Path, timeout: float) -> dict[str, Any]:
    """Run one task in a fresh Python process, so its memory peak is its own."""
    environment = dict(os.environ)
    if int(task.get("threads") or 0) > 0:
        environment["OMP_NUM_THREADS"] = str(task["threads"])
    command = [sys.executable, str(script), "--worker", json.dumps(task)]
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=environment, check=False
        )
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"child process timed out after {timeout:.0f} s"}
    if completed.returncode != 0:
        lines = (completed.stderr or completed.stdout).strip().splitlines()
        return {"status": "failed", "reason": lines[-1][:300] if lines else f"exit {completed.returncode}"}
    try:
        return json.loads(completed.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"status": "failed", "reason": "child printed no result"}


def cli_command() -> list[str]:
    """``layer-ensembles`` next to this interpreter when installed, else the module (same code)."""
    script = Path(sys.executable).parent / "layer-ensembles"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "LayerEnsemblesLib.cli"]


def measure_cli(
    size: SizeSpec, model: Path, device: str, warmup: int, repeats: int, threads: int | None, folder: Path
) -> dict[str, Any]:
    """``layer-ensembles segment`` on a NIfTI file of this size, as a user runs it: one process per case."""
    source = input_file(size, folder)
    out = Path(folder) / f"cli_{size.name}"
    command = [
        *cli_command(),
        "segment",
        str(source),
        "--model",
        str(model),
        "--out",
        str(out),
        "--device",
        device,
        "--maps",
        "all",
        "--window",
        ",".join(str(w) for w in size.window),
        "--quiet",
        "--overwrite",
    ]
    environment = dict(os.environ)
    package = str(Path(__file__).resolve().parents[2] / "LayerEnsemblesSegmentation")
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package, environment.get("PYTHONPATH")]))
    if threads:
        environment["OMP_NUM_THREADS"] = str(threads)
    times: list[float] = []
    peaks: list[float] = []
    stage_times: dict[str, list[float]] = {}
    log = Path(folder) / f"cli_{size.name}.log"
    for index in range(warmup + repeats):
        with open(log, "w", encoding="utf-8") as handle:
            started = time.perf_counter()
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=environment)
            _, status, usage = os.wait4(process.pid, 0)
            elapsed = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            return {"status": "failed", "reason": lines[-1][:300] if lines else f"exit {process.returncode}"}
        if index < warmup:
            continue
        times.append(elapsed)
        peaks.append(usage.ru_maxrss / 1024.0)  # KiB on Linux
        case = source.name.split(".")[0]
        report = json.loads((out / f"{case}_report.json").read_text(encoding="utf-8"))
        for key, value in report.get("timings", {}).items():
            stage_times.setdefault(key, []).append(float(value))
    result = summarize(times)
    result.update(
        peak_rss_mb=round(max(peaks), 1) if peaks else None,
        stages_median_s={k: round(statistics.median(v), 4) for k, v in stage_times.items()},
        input_file=str(source) if size.real_case else source.name,
        command=" ".join(["layer-ensembles", *command[len(cli_command()) :]]).replace(str(folder), "$WORK"),
    )
    return result

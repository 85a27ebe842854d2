#!/usr/bin/env python3
"""Benchmark Layer Ensembles against a plain pass, Deep Ensembles (M = 5) and MC dropout (T = 10).

One command, from the repository root::

    python Testing/benchmarks/run_benchmark.py --device cpu            # results in benchmarks/cpu/
    python Testing/benchmarks/run_benchmark.py --device cuda           # results in benchmarks/gpu/
    python Testing/benchmarks/run_benchmark.py --device cpu --quick    # tiny sizes, one repeat: a smoke run

Every method runs through the same engine (``LayerEnsemblesLib.inference.Predictor``) on the same
input, with the same sliding window, so the ratios compare methods, not code paths. What is measured
per size: ``plain``, ``plain_same``, ``le``, ``de5``, ``mcd10`` (see ``bench_models``), recombination
(kept heads moved by one and by half, and a new threshold, without a new forward pass) and the
end-to-end CLI (``layer-ensembles segment`` in its own process: reading, preprocessing, inference,
writing); then a scaling table over the number of heads (U-Net depth 3..6). Results go to
``results.json`` and ``results.md`` in ``--out``, rewritten after every measurement so a run that is
stopped still leaves its tables.

A budget keeps a run bounded: each measurement's cost is estimated from the rates already measured,
repeats are reduced to fit ``--measurement-budget`` and a measurement that cannot fit even once is
skipped, with the estimate as its reason. This is what makes the big Deep Ensemble and MC dropout
runs skip on a 2-core CPU while they run on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parents[1]
for _path in (str(REPOSITORY / "LayerEnsemblesSegmentation"), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import torch  # noqa: E402
from bench_inputs import QUICK_SIZES, SIZES, WINDOW_3D, SizeSpec, hippocampus_case  # noqa: E402
from bench_measure import (  # noqa: E402
    ALL_MAPS,
    measure_cli,
    measure_predict,
    measure_recombine,
    run_isolated,
    worker_main,
)
from bench_models import DE_MEMBERS, MC_SAMPLES, NetworkSpec, build_models_isolated  # noqa: E402
from bench_report import render_markdown, summarize_document  # noqa: E402

PREDICT_METHODS = ("plain", "plain_same", "le", "le_agreement", "de5", "mcd10")
ALL_METHODS = ("plain", "plain_same", "le", "le_agreement", "recombine", "cli", "de5", "mcd10")
PASSES = {"plain": 1, "plain_same": 1, "le": 1, "le_agreement": 1, "de5": DE_MEMBERS, "mcd10": MC_SAMPLES}
PREDICT_MAPS = {
    "plain": (),
    "plain_same": (),
    "le": ALL_MAPS,
    "le_agreement": ("agreement",),  # the CLI's default output
    "de5": ALL_MAPS,
    "mcd10": ALL_MAPS,
}
MODEL_FILE = {"le_agreement": "le", "recombine": "le", "cli": "le"}  # methods that reuse another's archive
# plain, LE and recombination first; the baselines and the CLI next; the rest if time remains
PRIORITY_TIERS = (
    ("plain", "le", "recombine"),
    ("cli", "de5", "mcd10"),
    ("plain_same", "le_agreement", "heads"),
)
CLI_STARTUP_S = 5.0  # interpreter, torch import and model load, added to a CLI run's estimate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--sizes", help=f"comma list of {', '.join(SIZES)} (quick: {', '.join(QUICK_SIZES)})")
    parser.add_argument("--methods", help=f"comma list of {', '.join(ALL_METHODS)}, heads (default: all)")
    parser.add_argument(
        "--repeats", type=int, help="timed repeats (default 5 on CUDA, 3 on the CPU, 1 quick)"
    )
    parser.add_argument("--warmup", type=int, help="untimed warm-up calls (default 2 on CUDA, 1 otherwise)")
    parser.add_argument(
        "--cli-repeats", type=int, help="end-to-end CLI runs per size (default 2 CUDA, 3 CPU)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes and network, one repeat (smoke run)")
    parser.add_argument("--out", help="results folder (default benchmarks/cpu or benchmarks/gpu)")
    parser.add_argument("--work", help="scratch folder for model files and inputs (default: a temp folder)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default 2 on the CPU)")
    parser.add_argument(
        "--heads-size", type=int, help="cube edge for the heads scaling (default 128 CUDA, 64 CPU)"
    )
    parser.add_argument("--depths", default=None, help="U-Net depths for the heads scaling (default 3,4,5,6)")
    parser.add_argument(
        "--measurement-budget",
        type=float,
        help="seconds one measurement may take (default 240 CPU, 120 CUDA)",
    )
    parser.add_argument(
        "--time-budget", type=float, help="seconds for the whole run (default 1500 CPU, 330 CUDA)"
    )
    parser.add_argument(
        "--isolate",
        choices=("auto", "yes", "no"),
        default="auto",
        help="one child process per measurement (auto: yes on the CPU, where peak RSS needs it)",
    )
    parser.add_argument(
        "--recombine-network",
        choices=("auto", "demo", "light"),
        default="auto",
        help="network whose heads are recombined (auto: light on the CPU, where the demo "
        "network's forward pass alone would eat the budget; recombination never runs it)",
    )
    parser.add_argument(
        "--profile",
        metavar="SIZES",
        help="instead of benchmarking, profile one LE prediction "
        "and one recombination step per size (cProfile + torch.profiler) into --out",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
    from LayerEnsemblesLib.devices import resolve_device

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    sizes = QUICK_SIZES if args.quick else SIZES
    chosen = list(sizes) if not args.sizes else [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in sizes]
    if unknown:
        raise SystemExit(f"unknown size(s) {unknown}; choose from {', '.join(sizes)}")
    methods = list(ALL_METHODS) + ["heads"]
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        bad = [m for m in methods if m not in (*ALL_METHODS, "heads")]
        if bad:
            raise SystemExit(f"unknown method(s) {bad}; choose from {', '.join(ALL_METHODS)}, heads")
    network = NetworkSpec(depth=3, base_channels=4) if args.quick else NetworkSpec()
    light = NetworkSpec(depth=network.depth, base_channels=2)
    recombine_network = args.recombine_network
    if recombine_network == "auto":
        recombine_network = "demo" if cuda or args.quick else "light"
    depths = args.depths or ("3,4" if args.quick else "3,4,5,6")
    return {
        "device": device,
        "cuda": cuda,
        "sizes": [sizes[name] for name in chosen],
        "methods": methods,
        "repeats": args.repeats if args.repeats is not None else (1 if args.quick else 5 if cuda else 3),
        "warmup": args.warmup if args.warmup is not None else (2 if cuda and not args.quick else 1),
        "cli_repeats": args.cli_repeats
        if args.cli_repeats is not None
        else (1 if args.quick else 2 if cuda else 3),
        "threads": args.threads if args.threads is not None else (None if cuda else 2),
        "heads_size": args.heads_size or (32 if args.quick else 128 if cuda else 64),
        "depths": [int(d) for d in depths.split(",")],
        "measurement_budget": args.measurement_budget or (120.0 if cuda else 240.0),
        "time_budget": args.time_budget or (330.0 if cuda else 1500.0),
        "isolate": (not cuda) if args.isolate == "auto" else args.isolate == "yes",
        "network": network,
        "recombine_spec": network if recombine_network == "demo" else light,
        "out": Path(args.out) if args.out else REPOSITORY / "benchmarks" / ("gpu" if cuda else "cpu"),
        "work": Path(args.work) if args.work else Path(tempfile.gettempdir()) / "layer-ensembles-benchmark",
        "quick": args.quick,
    }


def processed_voxels(size: SizeSpec, spec: NetworkSpec) -> int:
    """Voxels the network runs over: window count times window size (overlap included)."""
    from LayerEnsemblesLib.inference.sliding_window import plan_windows

    slicewise = size.spatial_dims == 2
    divisor = [1 if slicewise else spec.divisor, spec.divisor, spec.divisor]
    padded = [int(math.ceil(s / d) * d) for s, d in zip(size.shape, divisor, strict=True)]
    plan = plan_windows(padded, size.window, divisor, 0.5, slicewise)
    return plan.count * math.prod(plan.window)


def code_digest() -> str:
    """Model files are cached across runs; a change in the network code makes new ones."""
    digest = hashlib.sha1()
    for path in (
        REPOSITORY / "LayerEnsemblesSegmentation" / "LayerEnsemblesLib" / "networks.py",
        HERE / "bench_models.py",
    ):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


class BenchmarkRun:
    """Plans, budgets, runs and records the measurements; rewrites the result files after each."""

    def __init__(self, settings: dict[str, Any], argv: list[str]) -> None:
        self.settings = settings
        self.started = time.perf_counter()
        self.records: list[dict[str, Any]] = []
        self.rates: dict[tuple[str, str], float] = {}  # (network key, method) -> seconds per processed voxel
        self.models_folder = settings["work"] / f"models-{code_digest()}"
        self.meta = self._meta(argv)

    # ------------------------------------------------------------------ bookkeeping
    def _meta(self, argv: list[str]) -> dict[str, Any]:
        from LayerEnsemblesLib.devices import device_report

        settings = self.settings
        device = settings["device"]
        report = device_report(device)
        meta = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": "python Testing/benchmarks/run_benchmark.py " + " ".join(argv),
            "device": report,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": settings["threads"] or torch.get_num_threads(),
            "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(),
            "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "git_commit": _git_commit(),
            "sizes": [size.name for size in settings["sizes"]],
            "network": settings["network"].describe(),
            "recombine_network": settings["recombine_spec"].describe(),
            "repeats": settings["repeats"],
            "warmup": settings["warmup"],
            "cli_repeats": settings["cli_repeats"],
            "measurement_budget_s": settings["measurement_budget"],
            "time_budget_s": settings["time_budget"],
            "isolated_processes": settings["isolate"],
            "quick": settings["quick"],
            "hippocampus_case": str(hippocampus_case() or "not found (synthetic crop used)"),
            "timing": "torch.cuda.Event" if settings["cuda"] else "time.perf_counter",
            "memory": "torch.cuda.max_memory_allocated above the allocation before the first call"
            if settings["cuda"]
            else "peak resident set (VmHWM) above the resident set before the first call, "
            "one fresh process per measurement",
        }
        if settings["cuda"]:
            meta["cudnn"] = torch.backends.cudnn.version()
            meta["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
            meta["cudnn_benchmark"] = torch.backends.cudnn.benchmark
            meta["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
        return meta

    def write(self) -> None:
        out = self.settings["out"]
        out.mkdir(parents=True, exist_ok=True)
        self.meta["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        if hasattr(os, "getloadavg"):
            self.meta["load_average_end"] = list(os.getloadavg())
        document = {"meta": self.meta, "measurements": self.records}
        document["summary"] = summarize_document(document)
        (out / "results.json").write_text(
            json.dumps(document, indent=2, allow_nan=False, default=str) + "\n", encoding="utf-8"
        )
        (out / "results.md").write_text(render_markdown(document), encoding="utf-8")

    def record(self, entry: dict[str, Any]) -> None:
        entry.setdefault("status", "ok")
        if hasattr(os, "getloadavg"):
            entry["load_average_1min"] = round(os.getloadavg()[0], 2)
        self.records.append(entry)
        line = (
            f"[{time.perf_counter() - self.started:7.1f} s] {entry['section']:<9} {entry['size']:<14} "
            f"{entry['method']:<11} {entry['status']}"
        )
        if entry["status"] == "ok":
            value = entry.get("median_s") or (entry.get("heads_step") or {}).get("median_s")
            if value is not None:
                line += f"  median {value:.4f} s"
        else:
            line += f"  ({entry.get('reason', '')})"
        print(line, flush=True)
        self.write()

    # ------------------------------------------------------------------ budget
    def _estimate(self, spec: NetworkSpec, method: str, size: SizeSpec) -> tuple[float | None, str]:
        """Seconds for one run, from the rates measured so far."""
        voxels = processed_voxels(size, spec)
        if (spec.key, method) in self.rates:
            return self.rates[(spec.key, method)] * voxels, f"measured {method} rate"
        basis = PASSES.get(method, 1)
        for known in ("le", "plain", "plain_same"):
            if (spec.key, known) in self.rates:
                seconds = self.rates[(spec.key, known)] * voxels * basis
                if method == "cli":
                    seconds += CLI_STARTUP_S
                if method == "recombine":
                    seconds *= 1.5
                return seconds, f"{basis} x the measured {known} rate"
        return None, "no rate measured yet"

    def _plan_repeats(
        self, spec: NetworkSpec, method: str, size: SizeSpec, warmup: int, repeats: int
    ) -> tuple[int, str | None]:
        """Repeats that fit the budgets (0 means skip), and the reason when fewer than asked."""
        per_run, basis = self._estimate(spec, method, size)
        remaining = self.settings["time_budget"] - (time.perf_counter() - self.started)
        if remaining <= 0:
            return 0, f"total time budget of {self.settings['time_budget']:.0f} s used up"
        if per_run is None:
            return repeats, None
        budget = min(self.settings["measurement_budget"], remaining)
        fitting = int(budget // per_run) - warmup
        if fitting >= repeats:
            return repeats, None
        which = "per-measurement" if budget == self.settings["measurement_budget"] else "remaining total"
        reason = (
            f"estimated {per_run:.0f} s per run ({basis}) x {warmup + repeats} runs > "
            f"{budget:.0f} s {which} budget"
        )
        if fitting < 1:
            return 0, reason
        return fitting, reason.replace(" > ", " exceeds ").replace(" budget", f" budget: {fitting} repeats")

    def _learn(self, spec: NetworkSpec, method: str, size: SizeSpec, seconds: float | None) -> None:
        if seconds:
            self.rates[(spec.key, method)] = seconds / processed_voxels(size, spec)

    # ------------------------------------------------------------------ measurements
    def _run_task(self, task: dict[str, Any], size: SizeSpec) -> dict[str, Any]:
        task = {
            **task,
            "device": str(self.settings["device"]),
            "threads": self.settings["threads"] or 0,
            "size": dataclasses.asdict(size),
            "quick": self.settings["quick"],
        }
        if self.settings["isolate"]:
            timeout = 2 * self.settings["measurement_budget"] + 180
            result = run_isolated(task, Path(__file__), timeout)
            return result
        try:
            if task["kind"] == "recombine":
                return measure_recombine(task, size)
            return measure_predict(task, size)
        except Exception as error:  # noqa: BLE001 - one failed measurement must not end the run
            return {
                "status": "failed",
                "reason": f"{type(error).__name__}: {str(error).splitlines()[0][:240]}",
            }
        finally:
            gc.collect()
            if self.settings["cuda"]:
                torch.cuda.empty_cache()

    def measure(self, section: str, size: SizeSpec, method: str, spec: NetworkSpec) -> None:
        settings = self.settings
        warmup = 0 if method == "cli" else settings["warmup"]
        repeats = settings["cli_repeats"] if method == "cli" else settings["repeats"]
        repeats, note = self._plan_repeats(spec, method, size, warmup, repeats)
        entry: dict[str, Any] = {
            "section": section,
            "size": size.name,
            "size_label": size.label,
            "method": method,
            "network": spec.key,
            "voxels": size.voxels,
        }
        if repeats == 0:
            self.record({**entry, "status": "skipped", "reason": note})
            return
        if note:
            entry["note"] = note
        archive = MODEL_FILE.get(method, method)
        if section == "methods":  # one export process for all of a network's archives (each costs an import)
            wanted = {MODEL_FILE.get(m, m) for m in settings["methods"] if m in PREDICT_METHODS} | {"le"}
        else:
            wanted = {archive, "plain"} if section == "heads" else {archive}
        try:
            build_models_isolated(spec, self.models_folder, tuple(sorted(wanted)))
        except Exception:  # noqa: BLE001 - retried one archive at a time below, which names the culprit
            pass
        try:
            model = build_models_isolated(spec, self.models_folder, (archive,))[archive]
        except Exception as error:  # noqa: BLE001
            self.record({**entry, "status": "failed", "reason": f"model export: {error}"})
            return
        if method == "cli":
            try:
                result = measure_cli(
                    size,
                    model,
                    str(settings["device"]),
                    warmup,
                    repeats,
                    settings["threads"],
                    settings["work"],
                )
            except Exception as error:  # noqa: BLE001
                result = {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
        elif method == "recombine":
            result = self._run_task(
                {"kind": "recombine", "model": str(model), "warmup": warmup, "repeats": repeats}, size
            )
        else:
            result = self._run_task(
                {
                    "kind": "predict",
                    "model": str(model),
                    "warmup": warmup,
                    "repeats": repeats,
                    "maps": list(PREDICT_MAPS[method]),
                },
                size,
            )
        entry.update(result)
        if entry.get("status", "ok") == "ok":
            per_run = result.get("median_s") if method != "recombine" else result.get("first_prediction_s")
            self._learn(spec, method, size, per_run)
        self.record(entry)

    def run(self) -> int:
        """Measure in priority tiers, so that a tight budget drops the least important measurements."""
        settings = self.settings
        settings["work"].mkdir(parents=True, exist_ok=True)
        methods = settings["methods"]
        for tier in PRIORITY_TIERS:
            for size in settings["sizes"]:
                spec = dataclasses.replace(settings["network"], spatial_dims=size.spatial_dims)
                for method in (m for m in tier if m in methods and m != "heads"):
                    if method == "recombine":
                        light = dataclasses.replace(
                            settings["recombine_spec"], spatial_dims=size.spatial_dims
                        )
                        self.measure("recombine", size, method, light)
                    else:
                        self.measure("cli" if method == "cli" else "methods", size, method, spec)
            if "heads" in tier and "heads" in methods:
                edge = settings["heads_size"]
                cube = SizeSpec(f"cube{edge}", f"3D {edge}³", (edge, edge, edge), WINDOW_3D)
                for depth in settings["depths"]:
                    spec = dataclasses.replace(settings["network"], depth=depth)
                    for method in ("plain", "le"):
                        self.measure("heads", cube, method, spec)
        self.write()
        failed = [r for r in self.records if r["status"] == "failed"]
        print(
            f"results: {settings['out'] / 'results.md'} "
            f"({len(self.records)} measurements, {len(failed)} failed)"
        )
        return 1 if failed else 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return completed.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    settings = resolve_settings(args)
    if settings["threads"]:
        torch.set_num_threads(settings["threads"])
    if args.profile:
        return profile(settings, args.profile)
    return BenchmarkRun(settings, argv).run()


def profile(settings: dict[str, Any], names: str) -> int:
    from bench_profile import profile_size

    sizes = QUICK_SIZES if settings["quick"] else SIZES
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if name not in sizes:
            raise SystemExit(f"unknown size {name!r}; choose from {', '.join(sizes)}")
        size = sizes[name]
        spec = dataclasses.replace(settings["recombine_spec"], spatial_dims=size.spatial_dims)
        model = build_models_isolated(spec, settings["work"] / f"models-{code_digest()}", ("le",))["le"]
        path = profile_size(model, size, str(settings["device"]), settings["out"], spec.describe())
        print(f"profile: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

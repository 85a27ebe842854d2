#!/usr/bin/env python3
"""GPU throughput items of issue 15: windows per pass, file-to-report time, mixed precision, stitching.

One command, from the repository root (``benchmarks/gpu_check.sh`` runs it on a GPU)::

    python Testing/benchmarks/run_throughput.py --device cuda --out benchmarks/gpu
    python Testing/benchmarks/run_throughput.py --device cpu --quick --out /tmp/x    # smoke run

Measured, each as the median of ``--repeats`` timed runs after one warm-up:

1. ``batch_windows``: hippocampus cases per second (the shipped model, real cases, read and
   predicted in process) and seconds per 160×192×160 volume with the same model's 40×56×40 window,
   at 1, 4 and 16 windows per forward pass. A hippocampus crop fits one window, so there the batch
   can only show that it costs nothing; the large volume shows what it buys.
2. ``file_to_report``: a 256×256×160 NIfTI through ``layer-ensembles segment`` in process (reading,
   preprocessing, sliding window, segmentation, agreement map, AULA, writing the files and the
   report), the benchmark network (depth 5, 16 base channels) with a 160×192×160 window; target
   ≤ 1.5 s on a GPU.
3. ``mixed_precision``: the same network on 160×192×160 with and without bf16 autocast: time,
   the fraction of equal segmentation voxels, the largest agreement-map difference and the AULA
   difference.
4. ``stitch``: 256×256×160 with the blended heads on the compute device against on the CPU.

Writes ``throughput.json`` and ``throughput.md`` in ``--out`` after every item.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parents[1]
for _path in (str(REPOSITORY / "LayerEnsemblesSegmentation"), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402
from bench_inputs import HIPPOCAMPUS, synthetic_image  # noqa: E402
from bench_models import NetworkSpec, build_models  # noqa: E402
from LayerEnsemblesLib.cli import main as cli_main  # noqa: E402
from LayerEnsemblesLib.devices import device_report, resolve_device  # noqa: E402
from LayerEnsemblesLib.inference import Predictor  # noqa: E402

SHIPPED_MODEL = REPOSITORY / "LayerEnsemblesSegmentation" / "Resources" / "Models" / "hippocampus_le3d.pt"
FULL = {"cases": 32, "large": (160, 192, 160), "huge": (160, 256, 256), "window": (160, 192, 160)}
QUICK = {"cases": 3, "large": (48, 56, 48), "huge": (48, 64, 64), "window": (32, 32, 32)}
BATCHES = (1, 4, 16)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(REPOSITORY / "benchmarks" / "gpu"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes and network (a smoke run)")
    return parser.parse_args(argv)


def timed(call: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, object]:
    """Median seconds over ``repeats`` after one untimed warm-up, and the last result."""
    result = call()
    values = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        values.append(time.perf_counter() - start)
    return statistics.median(values), result


def batch_windows(args, sizes, device, document, save) -> None:
    cases = sorted((HIPPOCAMPUS / "imagesTr").glob("*.nii.gz"))[: sizes["cases"]]
    large = synthetic_image(sizes["large"], seed=1)
    entry: dict = {"hippocampus_cases": len(cases), "large_shape_zyx": list(sizes["large"])}
    reference = None
    for batch in BATCHES:
        predictor = Predictor(SHIPPED_MODEL, device=device, batch_windows=batch)
        row: dict = {}
        if cases:

            def run_cases(predictor=predictor) -> None:
                for case in cases:
                    predictor.predict(sitk.ReadImage(str(case), sitk.sitkFloat32))

            seconds, _ = timed(run_cases, max(1, args.repeats - 1), device)
            row["hippocampus_cases_per_s"] = round(len(cases) / seconds, 2)
        seconds, prediction = timed(lambda p=predictor: p.predict(large), args.repeats, device)
        row["large_s"] = round(seconds, 3)
        row["large_windows"] = prediction.to_report()["window"]["count"]
        labels = sitk.GetArrayFromImage(prediction.segmentation)
        reference = labels if reference is None else reference
        row["large_segmentation_equal_to_batch_1"] = bool((labels == reference).all())
        entry[f"batch_{batch}"] = row
        save()
    document["batch_windows"] = entry


def file_to_report(args, sizes, device, document, save, model: Path, work: Path) -> None:
    source = work / "input_256x256x160.nii.gz"
    sitk.WriteImage(synthetic_image(sizes["huge"], seed=2), str(source), useCompression=True)
    window = ",".join(str(w) for w in sizes["window"])
    runs = iter(range(1000))

    def segment() -> dict:
        out = work / f"out{next(runs)}"
        code = cli_main(["segment", str(source), "--model", str(model), "--out", str(out),
                         "--device", str(device), "--window", window, "--quiet"])  # fmt: skip
        if code != 0:
            raise RuntimeError(f"segment exited with {code}")
        return json.loads((out / "input_256x256x160_report.json").read_text())

    seconds, report = timed(segment, args.repeats, device)
    document["file_to_report"] = {
        "shape_zyx": list(sizes["huge"]),
        "seconds": round(seconds, 3),
        "target_s": 1.5,
        "timings_of_last_run": report["timings"],
        "windows": report["window"]["count"],
    }
    save()


def mixed_precision(args, sizes, device, document, save, model: Path) -> None:
    image = synthetic_image(sizes["large"], seed=3)
    results = {}
    for enabled in (False, True):
        predictor = Predictor(model, device=device, window_size=sizes["window"], mixed_precision=enabled)
        seconds, prediction = timed(lambda p=predictor: p.predict(image), args.repeats, device)
        results[enabled] = (seconds, prediction)
    (fp32_s, fp32), (bf16_s, bf16) = results[False], results[True]
    labels = [sitk.GetArrayFromImage(p.segmentation) for p in (fp32, bf16)]
    agreement = [sitk.GetArrayFromImage(p.maps["agreement"]) for p in (fp32, bf16)]
    document["mixed_precision"] = {
        "applies": device.type == "cuda",
        "fp32_s": round(fp32_s, 3),
        "bf16_s": round(bf16_s, 3),
        "speedup": round(fp32_s / bf16_s, 3),
        "segmentation_equal_fraction": float((labels[0] == labels[1]).mean()),
        "agreement_max_abs_diff": float(np.abs(agreement[0] - agreement[1]).max()),
        "aula_abs_diff": _aula_difference(fp32, bf16),
    }
    save()


def stitch(args, sizes, device, document, save, model: Path) -> None:
    image = synthetic_image(sizes["huge"], seed=2)
    entry: dict = {}
    labels = {}
    for where in ("same", "cpu"):
        predictor = Predictor(model, device=device, window_size=sizes["window"], stitch_device=where)
        seconds, prediction = timed(lambda p=predictor: p.predict(image), args.repeats, device)
        stitched_on = prediction.to_report()["window"]["stitch_device"]
        entry[where] = {"seconds": round(seconds, 3), "stitch_device": stitched_on}
        labels[where] = sitk.GetArrayFromImage(prediction.segmentation)
    entry["segmentation_equal_fraction"] = float((labels["same"] == labels["cpu"]).mean())
    document["stitch"] = entry
    save()


def _aula_difference(a, b) -> float | None:
    if a.aula.normalized.get("union") is None or b.aula.normalized.get("union") is None:
        return None
    return abs(float(a.aula.normalized["union"]) - float(b.aula.normalized["union"]))


def render(document: dict) -> str:
    lines = ["# Throughput (issue 15)", "", f"{document['device']} — {document['date']}", ""]
    entry = document.get("batch_windows")
    if entry:
        lines += ["## Windows per forward pass", "",
                  f"Shipped hippocampus model; {entry['hippocampus_cases']} real cases (one window each); "
                  f"a synthetic {'×'.join(map(str, entry['large_shape_zyx']))} volume (many windows).", "",
                  "| windows per pass | hippocampus cases/s | large volume (s) | windows | labels as B=1 |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for batch in BATCHES:
            row = entry.get(f"batch_{batch}")
            if row:
                lines.append(
                    f"| {batch} | {row.get('hippocampus_cases_per_s', 'n/a')} | {row['large_s']} | "
                    f"{row['large_windows']} | {row['large_segmentation_equal_to_batch_1']} |"
                )
        lines.append("")
    entry = document.get("file_to_report")
    if entry:
        lines += ["## File to segmentation, agreement map and report", "",
                  f"{'×'.join(map(str, entry['shape_zyx']))}: **{entry['seconds']} s** (target ≤ "
                  f"{entry['target_s']} s), {entry['windows']} window(s); last run's stages: "
                  f"`{json.dumps(entry['timings_of_last_run'])}`", ""]  # fmt: skip
    entry = document.get("mixed_precision")
    if entry:
        lines += ["## Mixed precision (bf16 autocast)", "",
                  "| fp32 (s) | bf16 (s) | speed-up | equal label voxels | max agreement diff | AULA diff |",
                  "|---|---|---|---|---|---|",
                  f"| {entry['fp32_s']} | {entry['bf16_s']} | {entry['speedup']} | "
                  f"{entry['segmentation_equal_fraction']:.6f} | {entry['agreement_max_abs_diff']:.4f} | "
                  f"{entry['aula_abs_diff']} |", ""]  # fmt: skip
        if not entry["applies"]:
            lines += ["(autocast applies on CUDA only: both rows are fp32 here)", ""]
    entry = document.get("stitch")
    if entry:
        lines += ["## Stitching device", "", "| blended heads on | seconds |", "|---|---|"]
        lines += [f"| {entry[k]['stitch_device']} ({k}) | {entry[k]['seconds']} |" for k in ("same", "cpu")]
        lines += ["", f"Equal label voxels between the two: {entry['segmentation_equal_fraction']:.6f}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    document: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_report(device).get("device_name", str(device)),
        "device_report": device_report(device),
        "quick": args.quick,
    }

    def save() -> None:
        (out / "throughput.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
        (out / "throughput.md").write_text(render(document))

    spec = NetworkSpec(depth=3, base_channels=4) if args.quick else NetworkSpec()
    with tempfile.TemporaryDirectory(prefix="le-throughput-") as scratch:
        work = Path(scratch)
        model = build_models(spec, work / "models", methods=("plain",))["plain"].parent / "le.pt"
        steps = [
            ("file_to_report", lambda: file_to_report(args, sizes, device, document, save, model, work)),
            ("batch_windows", lambda: batch_windows(args, sizes, device, document, save)),
            ("mixed_precision", lambda: mixed_precision(args, sizes, device, document, save, model)),
            ("stitch", lambda: stitch(args, sizes, device, document, save, model)),
        ]
        for name, step in steps:
            start = time.perf_counter()
            try:
                step()
            except Exception as error:  # noqa: BLE001 - one failed item must not lose the others
                document[name] = {"error": f"{type(error).__name__}: {error}"}
                save()
            print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
    save()
    print(render(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())

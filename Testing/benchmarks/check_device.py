#!/usr/bin/env python3
"""Does the engine give the same answer on the GPU as on the CPU? Run before trusting GPU timings.

The same model file and input go through ``Predictor`` on the CPU and on ``--device``; the check
compares the segmentation (fraction of voxels that differ), the four voxel maps (largest difference
and fraction of voxels off by more than 1e-3), normalised AULA per class and union, the decision, and
the same after a recombination (kept heads 3..end). Cases: the hippocampus crop (one window) and a
synthetic volume with a small window (sliding-window blending). cuDNN's TF32 is switched off for the
strict comparison, since TF32 convolutions differ from fp32 by design; the same comparison with the
torch defaults (what the benchmark runs) is reported too, without a pass/fail.

Writes ``check.json`` and ``check.md`` into ``--out``; exits 1 when a strict comparison fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _path in (str(HERE.parents[1] / "LayerEnsemblesSegmentation"), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402
from bench_inputs import SIZES, SizeSpec, load_input  # noqa: E402
from bench_measure import ALL_MAPS  # noqa: E402
from bench_models import NetworkSpec, build_models  # noqa: E402

SEGMENTATION_TOLERANCE = 1e-4  # fraction of voxels whose label may differ (near-ties in fp32)
MAP_VALUE_TOLERANCE = 1e-3
MAP_FRACTION_TOLERANCE = 1e-3  # fraction of voxels whose map value may differ by more than the above
AULA_TOLERANCE = 1e-3  # normalised AULA, per class and union


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def compare(reference, other) -> dict[str, Any]:
    """Differences between two predictions of the same input."""
    seg_a, seg_b = _array(reference.segmentation), _array(other.segmentation)
    result: dict[str, Any] = {"segmentation_mismatch_fraction": float((seg_a != seg_b).mean())}
    for name in reference.maps:
        difference = np.abs(_array(reference.maps[name]).astype(np.float64) - _array(other.maps[name]))
        result[f"{name}_max_abs_diff"] = float(difference.max())
        result[f"{name}_fraction_over_tolerance"] = float((difference > MAP_VALUE_TOLERANCE).mean())
    aula = {}
    for key, value in reference.aula.normalized.items():
        other_value = other.aula.normalized[key]
        both_nan = np.isnan(value) and np.isnan(other_value)
        aula[key] = 0.0 if both_nan else float(abs(value - other_value))
    result["aula_normalized_abs_diff"] = aula
    result["decision_equal"] = reference.decision == other.decision
    return result


def passes(difference: dict[str, Any]) -> bool:
    ok = difference["segmentation_mismatch_fraction"] <= SEGMENTATION_TOLERANCE
    ok &= all(
        v <= MAP_FRACTION_TOLERANCE for k, v in difference.items() if k.endswith("_fraction_over_tolerance")
    )
    ok &= all(v <= AULA_TOLERANCE for v in difference["aula_normalized_abs_diff"].values())
    return bool(ok and difference["decision_equal"])


def run_case(model: Path, size: SizeSpec, device: str) -> dict[str, Any]:
    from LayerEnsemblesLib.inference import Predictor

    image, source = load_input(size)
    cpu = Predictor(model, device="cpu", window_size=size.window)
    target = Predictor(model, device=device, window_size=size.window)
    started = time.perf_counter()
    reference = cpu.predict(image, maps=ALL_MAPS)
    cpu_seconds = time.perf_counter() - started
    case: dict[str, Any] = {"size": size.label, "input": source, "cpu_seconds": round(cpu_seconds, 2)}
    strict_tf32 = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = False
        strict = target.predict(image, maps=ALL_MAPS)
    finally:
        torch.backends.cudnn.allow_tf32 = strict_tf32
    case["strict"] = compare(reference, strict)
    case["strict_recombined"] = compare(reference.recombine(skip_heads=3), strict.recombine(skip_heads=3))
    defaults = target.predict(image, maps=ALL_MAPS)
    case["torch_defaults"] = compare(reference, defaults)
    case["windows"] = strict.to_report()["window"]["count"]
    case["aula_cpu"] = reference.aula.normalized
    case["aula_device"] = strict.aula.normalized
    case["device"] = str(target.device)
    case["passed"] = passes(case["strict"]) and passes(case["strict_recombined"])
    return case


def render(document: dict[str, Any]) -> str:
    lines = [
        f"# Device check: {document['device']} against the CPU",
        "",
        f"Network: {document['network']}. Tolerances: segmentation <= {SEGMENTATION_TOLERANCE} of voxels "
        f"differ; maps: <= {MAP_FRACTION_TOLERANCE} of voxels off by > {MAP_VALUE_TOLERANCE}; normalised "
        f"AULA within {AULA_TOLERANCE}; same decision. Strict = cuDNN TF32 off.",
        "",
    ]
    lines += [
        "| case | windows | comparison | seg. mismatch | worst map fraction off | worst map max diff "
        "| worst AULA diff | decision equal | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in document["cases"]:
        for key in ("strict", "strict_recombined", "torch_defaults"):
            difference = case[key]
            fractions = [v for k, v in difference.items() if k.endswith("_fraction_over_tolerance")]
            maxima = [v for k, v in difference.items() if k.endswith("_max_abs_diff")]
            verdict = (
                ("pass" if passes(difference) else "**FAIL**")
                if key != "torch_defaults"
                else ("info" if passes(difference) else "info (outside the strict tolerance)")
            )
            mismatch = difference["segmentation_mismatch_fraction"]
            worst_aula = max(difference["aula_normalized_abs_diff"].values())
            lines.append(
                f"| {case['size']} | {case['windows']} | {key} | {mismatch:.2e} | {max(fractions):.2e} "
                f"| {max(maxima):.2e} | {worst_aula:.2e} | {difference['decision_equal']} | {verdict} |"
            )
    lines += ["", f"Overall: {'PASS' if document['passed'] else 'FAIL'}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "layer-ensembles-benchmark"))
    parser.add_argument("--quick", action="store_true", help="tiny network (a smoke run of the check itself)")
    args = parser.parse_args(argv)
    spec = NetworkSpec(depth=3, base_channels=4) if args.quick else NetworkSpec()
    model = build_models(spec, Path(args.work) / "check-models", ("le",))["le"]
    window = (32, 32, 32) if args.quick else (48, 64, 48)
    cases = [
        dataclasses.replace(SIZES["hippocampus"], window=(48, 64, 48)),
        SizeSpec(
            "check_sliding",
            "3D 64×96×80 synthetic, window " + "×".join(map(str, window)),
            (64, 96, 80),
            window,
        ),
    ]
    results = [run_case(model, size, args.device) for size in cases]
    document = {
        "device": args.device,
        "network": spec.describe(),
        "torch": torch.__version__,
        "cases": results,
        "passed": all(case["passed"] for case in results),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "check.json").write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "check.md").write_text(render(document), encoding="utf-8")
    print(render(document))
    return 0 if document["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Where a review redraw's seconds go, without a browser: the controller's kept-heads and threshold changes
on a real scene (slicer-core), stage by stage, and the process's resident memory.

    python Testing/benchmarks/bench_recombine.py [--out benchmarks/webapp] [--repeats 6] [--label NAME]

Each case is segmented in-process with the shipped demo model and saved as a results bundle; the review
controller takes it up (``add_from_bundle``, as the web app does for a segmented case) and the kept heads
are moved one step up and down ``--repeats`` times, then the threshold. The stages are timed by wrapping
the functions that do them, so the same script measures an older checkout (put it first on PYTHONPATH):
stages it lacks are left out. Writes ``recombine-<label>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import SimpleITK as sitk  # noqa: E402
from bench_inputs import hippocampus_case, synthetic_image  # noqa: E402

LARGE_SHAPE = (160, 256, 256)  # z, y, x
STAGES = {  # stage -> the (module, function) pairs timed for it (those a checkout has)
    "engine recombine (incl. resampling)": [("LayerEnsemblesLib.inference.results", "build_prediction")],
    "edit check": [("LayerEnsemblesLib.scene.results", "is_user_edited")],
    "segments written": [("LayerEnsemblesLib.scene.results", "write_segments")],
    "heatmap written": [("LayerEnsemblesLib.scene.results", "write_heatmap")],
    "uncertain regions": [
        ("LayerEnsemblesLib.scene.results", "regions_from_disagreement"),
        ("LayerEnsemblesLib.scene.results", "find_uncertain_regions"),
    ],
    "3D surfaces (segments, uncertain region)": [("LayerEnsemblesLib.review.review_actions", "show_in_3d")],
    "decision and plot": [
        ("LayerEnsemblesLib.scene.results", "store_decision"),
        ("LayerEnsemblesLib.scene.results", "write_agreement_plot"),
    ],
}


def resident_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class StageTimer:
    """Seconds spent in each wrapped function during one action (nested calls counted once, outermost)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._depth = 0

    def install(self) -> None:
        import importlib

        for stage, candidates in STAGES.items():
            for module_name, name in candidates:
                module = importlib.import_module(module_name)
                if hasattr(module, name):
                    setattr(module, name, self._wrap(stage, getattr(module, name)))
        from LayerEnsemblesLib.inference import results as engine

        original = engine.InferenceSession.to_input_space

        def to_input_space(session, volume, is_label):
            stage = "resample to input grid: labels" if is_label else "resample to input grid: maps"
            start = time.perf_counter()
            try:
                return original(session, volume, is_label)
            finally:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

        engine.InferenceSession.to_input_space = to_input_space

    def _wrap(self, stage: str, function):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

        return timed


def measure(image: sitk.Image, label: str, work: Path, repeats: int, timer: StageTimer) -> dict:
    from LayerEnsemblesLib.inference import Predictor
    from LayerEnsemblesLib.inference.bundle import save_bundle
    from LayerEnsemblesLib.review.controller import ReviewController
    from LayerEnsemblesLib.review.models import DEMO_MODEL, MODULE_DIR
    from LayerEnsemblesLib.scene import add_volume_from_image, create_scene

    bundle = work / f"{label.split()[0]}.pt"
    prediction = Predictor(str(MODULE_DIR / DEMO_MODEL), device="cpu").predict(image, maps=("agreement",))
    save_bundle(prediction, bundle)
    del prediction
    context = create_scene()
    volume = add_volume_from_image(context.scene, image, label)
    controller = ReviewController(context, bundle_folder=work / "kept")
    controller.load_model(DEMO_MODEL)
    before = resident_mb()
    start = time.perf_counter()
    if not controller.add_from_bundle(volume, bundle):
        raise RuntimeError(controller.state.last_error)
    shown = time.perf_counter() - start
    after_shown = resident_mb()
    first, last = controller.state.kept_heads
    heads, stages = [], []
    for index in range(repeats):
        timer.seconds.clear()
        start = time.perf_counter()
        moved = controller.set_kept_heads(first + (1 if index % 2 == 0 else 0), last)
        assert moved, controller.state.last_error
        heads.append(time.perf_counter() - start)
        stages.append(dict(timer.seconds))
    thresholds = []
    for index in range(repeats):
        start = time.perf_counter()
        assert controller.set_threshold(0.3 + 0.1 * (index % 2)), controller.state.last_error
        thresholds.append(time.perf_counter() - start)
    row = {
        "case": label,
        "shape_xyz": list(image.GetSize()),
        "case_shown_s": shown,
        "heads_change_s": heads,
        "heads_change_median_s": statistics.median(heads),
        "heads_stages_median_s": {
            stage: statistics.median(s.get(stage, 0.0) for s in stages) for stage in stages[0]
        },
        "threshold_change_s": thresholds,
        "threshold_change_median_s": statistics.median(thresholds),
        "rss_mb_before_case": before,
        "rss_mb_case_shown": after_shown,
        "rss_mb_after_changes": resident_mb(),
    }
    controller.close()
    return row


def table(results: dict) -> str:
    lines = [f"{results['label']}: {results['machine']}", ""]
    for row in results["rows"]:
        lines.append(
            f"{row['case']} ({'×'.join(map(str, row['shape_xyz']))}): kept-heads change "
            f"{row['heads_change_median_s']:.3f} s, "
            f"threshold change {row['threshold_change_median_s']:.4f} s, "
            f"RSS {row['rss_mb_before_case']:.0f} -> {row['rss_mb_case_shown']:.0f} MB (case shown) -> "
            f"{row['rss_mb_after_changes']:.0f} MB (after the changes)"
        )
        for stage, seconds in row["heads_stages_median_s"].items():
            lines.append(f"    {stage:<36} {seconds:.3f} s")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE.parents[1] / "benchmarks" / "webapp"))
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--large-spacing", type=float, default=0.25, help="mm per voxel of the large volume")
    args = parser.parse_args()
    timer = StageTimer()
    timer.install()
    cases = []
    hippocampus = hippocampus_case()
    if hippocampus is not None:
        cases.append((sitk.ReadImage(str(hippocampus), sitk.sitkFloat32), "hippocampus"))
    large = synthetic_image(LARGE_SHAPE)
    large.SetSpacing((args.large_spacing,) * 3)
    cases.append((large, f"synthetic 256x256x160 at {args.large_spacing:g} mm"))
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-recombine-") as folder:
        for image, label in cases:
            rows.append(measure(image, label, Path(folder), args.repeats, timer))
    results = {
        "label": args.label,
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, load average "
        f"{load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
        "repeats": args.repeats,
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = re.sub("[^a-z0-9]+", "-", args.label.lower()).strip("-")
    (out / f"recombine-{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a Layer Ensemble prediction and a recombination spend their time (cProfile plus torch.profiler).

``run_benchmark.py --profile SIZE`` writes ``profile_<size>.md`` into the results folder: the engine's
own functions by cumulative time (cProfile, so Python-level structure is visible) and the torch
operators by self time (torch.profiler), for one warm LE prediction with all maps and for one
recombination step (kept heads moved by one).
"""

from __future__ import annotations

import cProfile
import io
import pstats
from pathlib import Path
from typing import Any

import torch
from bench_inputs import SizeSpec, load_input
from bench_measure import ALL_MAPS


def _engine_functions(profile: cProfile.Profile, limit: int = 25) -> str:
    stream = io.StringIO()
    stats = pstats.Stats(profile, stream=stream)
    stats.sort_stats("cumulative").print_stats("LayerEnsemblesLib", limit)
    text = stream.getvalue()
    start = text.find("   ncalls")
    return text[start:] if start >= 0 else text


def _profiled(call) -> tuple[Any, str, str]:
    profile = cProfile.Profile()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as operators:
        profile.enable()
        result = call()
        profile.disable()
    table = operators.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
    return result, _engine_functions(profile), table


def profile_size(model: Path, size: SizeSpec, device: str, out: Path, network: str) -> Path:
    """Profile one warm LE prediction and one recombination step on ``size``."""
    from LayerEnsemblesLib.inference import Predictor

    image, source = load_input(size)
    predictor = Predictor(model, device=device, window_size=size.window)
    warm = predictor.predict(image, maps=ALL_MAPS)  # warm-up, unprofiled
    del warm
    prediction, predict_functions, predict_operators = _profiled(
        lambda: predictor.predict(image, maps=ALL_MAPS, keep_on_device=True)
    )
    step, step_functions, step_operators = _profiled(lambda: prediction.recombine(skip_heads=1))
    lines = [
        f"# Profile: {size.label}, {network}, {device}, {torch.get_num_threads()} thread(s)",
        "",
        f"Input: {source}. Engine timings of the prediction (s): "
        + ", ".join(f"{k} {v:.3f}" for k, v in prediction.timings.items()),
        "Engine timings of the recombination step (s): "
        + ", ".join(f"{k} {v:.3f}" for k, v in step.timings.items()),
        "",
        "## Prediction: engine functions by cumulative time (cProfile)",
        "",
        "```",
        predict_functions,
        "```",
        "",
        "## Prediction: torch operators by self time",
        "",
        "```",
        predict_operators,
        "```",
        "",
        "## Recombination step: engine functions by cumulative time",
        "",
        "```",
        step_functions,
        "```",
        "",
        "## Recombination step: torch operators by self time",
        "",
        "```",
        step_operators,
        "```",
        "",
    ]
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"profile_{size.name}.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path

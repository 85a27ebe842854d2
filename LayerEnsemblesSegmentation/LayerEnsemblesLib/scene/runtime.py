"""What a review GUI needs around the predictor: torch status, devices, model summary, run options, errors.

Shared by the Slicer widget and the web review app, and testable without either. torch is imported
inside the functions, never at import time: in Slicer it may not be installed yet (the PyTorch
extension installs it on first use), and the module must still load and explain that.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import InputError, first_line

HEATMAP_WITH_AGREEMENT = "agreement"
TORCH_REQUIREMENT = ">=2.1"  # also in pyproject.toml


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install (missing DLL, wrong CUDA) counts as missing
        return False
    return True


def _version_tuple(text: str) -> tuple[int, ...]:
    """Leading numeric parts of a version ("2.1.0+cu121" -> (2, 1, 0)); no packaging needed inside Slicer."""
    parts = []
    for part in text.split("+")[0].split("."):
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def torch_version_problem(requirement: str = TORCH_REQUIREMENT) -> str:
    """Empty when the installed torch meets ``requirement`` (">=X.Y"), else one line saying what to do."""
    if not torch_available():
        return "PyTorch is not installed"
    import torch

    minimum = requirement.removeprefix(">=").strip()
    if _version_tuple(torch.__version__) < _version_tuple(minimum):
        return (
            f"PyTorch {torch.__version__} is older than the required {requirement}: update it in the "
            "PyTorch Utils module and restart Slicer"
        )
    return ""


def device_choices() -> list[tuple[str, str]]:
    """(label, device spec) pairs: Auto, CPU, then each GPU with its name and memory."""
    choices = [("Auto (GPU if available)", "auto"), ("CPU", "cpu")]
    if not torch_available():
        return choices
    import torch

    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        properties = torch.cuda.get_device_properties(index)
        choices.append(
            (f"GPU {index}: {properties.name} ({properties.total_memory / 1024**3:.0f} GB)", f"cuda:{index}")
        )
    return choices


def torch_summary() -> str:
    """The torch and CUDA versions and the GPUs seen: the first thing to check when a GPU is not used."""
    if not torch_available():
        return "PyTorch is not installed yet; it is installed (after asking) on the first run."
    import torch

    build = "CPU only" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
    if torch.cuda.is_available():
        return f"PyTorch {torch.__version__}; CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)"
    return f"PyTorch {torch.__version__}; no usable GPU (build: {build}), running on the CPU"


def model_summary(model_path: str | Path | None) -> dict[str, Any]:
    """The text ``layer-ensembles info`` prints, plus head count, default skip and threshold for the GUI."""
    path = str(model_path or "")
    if path in ("", "."):
        return {"text": "No model selected. Choose a .pt file exported with `layer-ensembles export`."}
    if not os.path.isfile(path):
        return {"text": f"{path}: file not found."}
    # Only the metadata is read (no torch): Slicer can show it before PyTorch is installed, and the review
    # server's start does not wait for torch's import.
    from ..commands.info import describe
    from ..contract import read_metadata
    from ..metadata_schema import DEFAULT_AULA_THRESHOLD

    try:
        metadata = read_metadata(path)
    except InputError as error:
        return {"text": str(error)}
    threshold = metadata.aula_threshold if metadata.aula_threshold is not None else DEFAULT_AULA_THRESHOLD
    return {
        "text": describe(metadata),
        "headCount": metadata.num_heads,
        "skipHeads": metadata.skip_heads,
        "threshold": float(threshold),
        "name": metadata.name,
    }


def predict_options(
    metadata: Any,
    head_range: tuple[int, int] | None,
    threshold: float | None,
    heatmap_kind: str = HEATMAP_WITH_AGREEMENT,
) -> dict[str, Any]:
    """Keyword arguments for ``Predictor.predict`` from the GUI's settings.

    A head range that does not fit the model (left over from another model) falls back to the model's
    default, and a threshold equal to the model's calibrated one is not passed, so the result records
    that the calibrated threshold was used.
    """
    maps = (
        (HEATMAP_WITH_AGREEMENT,)
        if heatmap_kind == HEATMAP_WITH_AGREEMENT
        else (HEATMAP_WITH_AGREEMENT, heatmap_kind)
    )
    options: dict[str, Any] = {"maps": maps}
    if head_range is not None:
        first, stop = (int(v) for v in head_range)
        if 0 <= first < stop <= metadata.num_heads:
            options["head_range"] = (first, stop)
    calibrated = metadata.aula_threshold
    if threshold is not None and (calibrated is None or abs(float(threshold) - calibrated) > 1e-6):
        options["threshold"] = float(threshold)
    return options


class PredictorCache:
    """One loaded Predictor, kept while the model file, its modification time and the device stay the same."""

    def __init__(self) -> None:
        self._key = None
        self._predictor = None

    def get(self, model_path: str | Path, device: str = "auto"):
        from ..inference import Predictor

        path = str(model_path)
        if not os.path.isfile(path):
            raise InputError(f"{path}: model file not found; choose a .pt file in 'Model file'")
        key = (path, os.path.getmtime(path), device)
        if key != self._key:
            self._predictor, self._key = Predictor(path, device=device), key
        return self._predictor


def explain_error(error: BaseException) -> str:
    """One line that says what failed and what to do about it."""
    text = first_line(error, limit=10_000)
    lowered = text.lower()
    if isinstance(error, InputError):
        return text
    if isinstance(error, MemoryError) or "out of memory" in lowered or "can't allocate memory" in lowered:
        return (
            f"out of memory ({text[:120]}): crop the input with an ROI, close other applications, "
            "or choose CPU as the device"
        )
    if "cuda" in lowered:
        return (
            f"GPU error ({text[:120]}): choose CPU as the device, or install a PyTorch build that "
            "supports this GPU (PyTorch Utils module)"
        )
    return f"{type(error).__name__}: {text[:200]} (details in the Python console)"


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run a block with at most ``count`` torch CPU threads, then restore the previous number.

    A review's recombination reduces a few heads of one case: with torch's default one OpenMP thread per
    core, on a machine whose cores are busy (a training job, the browser) the threads' hand-offs cost
    more than the work (0.3 s instead of 0.02 s for a hippocampus case, 0.75 s instead of 0.45 s on
    256 x 256 x 160). Each output voxel is still summed in the same order, so the result is the same.
    """
    if not torch_available():
        yield
        return
    import torch

    previous = torch.get_num_threads()
    if previous <= count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def release_freed_memory() -> None:
    """Give the heap's freed pages back to the system (glibc only; elsewhere nothing happens).

    A recombination of a large volume frees tens of megabytes of full-volume buffers; glibc keeps such
    blocks below its (adaptive, up to 32 MB) mmap threshold in the heap, so a long review's resident
    memory grows with every kept-heads change unless they are trimmed once the change is shown.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None

"""Choosing the compute device and describing it, so every report says where a result was computed.

``auto`` prefers CUDA because one forward pass of a 3D U-Net is tens of times faster there; the CPU
remains a full citizen (the Slicer module runs on laptops without a GPU), and a run that exhausts GPU
memory falls back to it (see :mod:`LayerEnsemblesLib.inference.predictor`).
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from .errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N`` into a device that exists, or say why it cannot."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            built = (
                "built without CUDA"
                if torch.version.cuda is None
                else f"CUDA {torch.version.cuda}, no usable GPU"
            )
            raise InputError(
                f"device {spec!r}: CUDA is not available (torch {torch.__version__}, {built}); "
                "use --device cpu or auto"
            )
        if spec == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        index_text = spec.split(":", 1)[1]
        if not index_text.isdigit():
            raise InputError(f"device {spec!r}: expected cuda:N with N a GPU index")
        index = int(index_text)
        if index >= torch.cuda.device_count():
            raise InputError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) present")
        return torch.device("cuda", index)
    raise InputError(f"device {spec!r}: expected one of {', '.join(DEVICE_CHOICES)}")


def device_report(device: torch.device) -> dict[str, Any]:
    """Device, its name and memory, and the torch/CUDA versions: what a reader needs to reproduce timings."""
    report: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        report["device_name"] = properties.name
        report["total_memory_gb"] = round(properties.total_memory / 1024**3, 2)
    else:
        report["device_name"] = platform.processor() or platform.machine() or "CPU"
        report["total_memory_gb"] = _system_memory_gb()
    return report


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA and CPU allocation failures, including those raised inside TorchScript."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    if not isinstance(error, (RuntimeError, torch.jit.Error)):  # TorchScript wraps errors in jit.Error
        return False
    text = str(error).lower()
    return "out of memory" in text or "can't allocate memory" in text


def release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _system_memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 2)
    except (AttributeError, ValueError, OSError):  # not available on Windows
        return None

"""Model files as a review GUI names them: the shipped demo model by a path relative to the module.

A scene or a parameter node that stored the demo model's absolute install path would point at the old
install after an extension update; a path relative to the module folder (``Resources/Models/...``) stays
true across updates and machines.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from ..scene import runtime
from .state import ModelInfo

MODULE_DIR = Path(__file__).resolve().parents[2]  # LayerEnsemblesSegmentation/
DEMO_MODEL = "Resources/Models/hippocampus_le3d.pt"  # relative to MODULE_DIR


def resolve_model_path(path: str | os.PathLike | None) -> str:
    """An absolute model path: relative paths are taken from the module folder first, then the CWD."""
    text = str(path or "").strip()
    if text in ("", "."):
        return ""
    candidate = Path(text).expanduser()
    if not candidate.is_absolute() and (MODULE_DIR / candidate).is_file():
        return str(MODULE_DIR / candidate)
    return str(candidate.resolve())


def stored_model_path(path: str | os.PathLike) -> str:
    """The path to store in a scene: relative when the file is one of the module's own."""
    if not resolve_model_path(path):
        return ""
    resolved = Path(resolve_model_path(path))
    try:
        return resolved.relative_to(MODULE_DIR).as_posix()
    except ValueError:
        return str(resolved)


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """Head count, default heads and calibrated threshold of a model file; one-line InputError if unusable."""
    resolved = resolve_model_path(path)
    if not resolved:
        raise InputError("model: choose a model file (.pt exported with `layer-ensembles export`)")
    summary = runtime.model_summary(resolved)
    if "headCount" not in summary:
        raise InputError(
            summary["text"].splitlines()[0] if summary["text"] else f"{resolved}: unusable model"
        )
    from ..contract import read_metadata

    metadata = read_metadata(resolved)
    return ModelInfo(
        path=resolved,
        name=summary["name"],
        head_count=int(summary["headCount"]),
        default_heads=(int(summary["skipHeads"]) + 1, int(summary["headCount"])),
        threshold=float(summary["threshold"]),
        summary=summary["text"],
        head_names=tuple(metadata.head_names),
    )


def same_model(path_a: str | None, path_b: str | None) -> bool:
    """Whether two stored or given model paths name the same file."""
    if not path_a or not path_b:
        return False
    return os.path.normcase(resolve_model_path(path_a)) == os.path.normcase(resolve_model_path(path_b))

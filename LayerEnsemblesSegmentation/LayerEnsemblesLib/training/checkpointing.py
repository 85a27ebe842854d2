"""Checkpoints as plain dicts of tensors and JSON-able values, read with ``weights_only=True``.

Nothing in a checkpoint needs a Python class to load: model, optimiser, scheduler and scaler state
dicts, counters, metrics and RNG states converted to tensors and lists. That keeps ``torch.load``
in its safe mode (no arbitrary unpickling) and lets a checkpoint outlive refactors of the code.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..fileio import atomic_write_bytes

CHECKPOINT_FORMAT = "layer-ensembles-checkpoint"
CHECKPOINT_VERSION = 1


def rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)
    python_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": [python_state[0], list(python_state[1]), python_state[2]],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write atomically: a crash mid-save leaves the previous checkpoint intact."""
    document = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **state}
    buffer = io.BytesIO()
    torch.save(document, buffer)
    return atomic_write_bytes(path, buffer.getvalue(), overwrite=True)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        document = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle that needs classes, ...
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InputError(f"{path}: not a readable weights-only checkpoint ({first_line[:160]})") from None
    if not isinstance(document, dict) or document.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a layer-ensembles training checkpoint")
    if int(document.get("format_version", 0)) > CHECKPOINT_VERSION:
        raise InputError(
            f"{path}: checkpoint format version {document['format_version']} is newer than this reader"
        )
    return document

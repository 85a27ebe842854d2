"""Changing a model file's metadata without touching its network.

Calibration (a threshold) and the plain baseline (a head selection) are metadata changes. The archive
is loaded with ``torch.jit.load`` (never unpickled), saved again with the new ``_extra_files``
document into a temporary file in the destination folder, and renamed into place, so the original
is either replaced whole or left alone, and only when the caller allows it.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from pathlib import Path

import torch

from ..contract import METADATA_FILE, ModelMetadata, load_model
from ..errors import InputError
from ..fileio import atomic_write_bytes


def rewrite_metadata(
    source: str | Path,
    destination: str | Path,
    update: Callable[[ModelMetadata], ModelMetadata | None],
    overwrite: bool = False,
) -> tuple[Path, ModelMetadata]:
    """Copy ``source`` to ``destination`` with ``update`` applied to (a copy of) its metadata.

    ``update`` edits the metadata in place or returns a new one. Writing onto ``source`` itself, or
    onto any existing file, needs ``overwrite``.
    """
    source, destination = Path(source), Path(destination)
    if destination.exists() and not overwrite:
        raise InputError(f"{destination}: already exists (pass --overwrite to replace it)")
    module, metadata = load_model(source)
    edited = copy.deepcopy(metadata)
    edited = update(edited) or edited
    edited.validate(str(destination))
    buffer = io.BytesIO()
    torch.jit.save(module, buffer, _extra_files={METADATA_FILE: edited.to_json()})
    atomic_write_bytes(destination, buffer.getvalue(), overwrite=overwrite)
    return destination, edited

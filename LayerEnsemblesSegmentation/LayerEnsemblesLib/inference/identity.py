"""The identity of a model file, so that saved results can say which model made them.

A results bundle outlives the session that wrote it: when a reviewer reopens a scene or switches
models, the bundle's checksum tells whether its head outputs came from the model file now loaded.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path


def model_sha256(path: str | Path) -> str | None:
    """Hex SHA-256 of a file's bytes, or None when it cannot be read (cached per path, size and mtime)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return _sha256(str(Path(path).resolve()), status.st_size, status.st_mtime_ns)


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()

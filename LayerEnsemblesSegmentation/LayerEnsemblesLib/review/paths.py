"""Which files a review may open or write: only those under its inputs and its output folder.

The web review app takes paths from a browser. A path that leaves the folders the reviewer was given on
the command line (``..``, an absolute path elsewhere, a symbolic link pointing out) is refused, so a
connected browser cannot read or overwrite anything else on the server's disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError


class AllowedRoots:
    """The folders (and single files) a review may touch, resolved once, symbolic links followed."""

    def __init__(self, roots: Iterable[str | Path]):
        self.roots = tuple(dict.fromkeys(Path(os.path.realpath(root)) for root in roots))
        if not self.roots:
            raise InputError("review: no input or output folder given")

    def contains(self, path: str | Path) -> bool:
        resolved = Path(os.path.realpath(path))
        return any(resolved == root or root in resolved.parents for root in self.roots)

    def resolve(self, path: str | Path, base: str | Path | None = None) -> Path:
        """``path`` (relative to ``base`` when given) resolved, or InputError when it leaves every root."""
        text = str(path or "").strip()
        if not text or "\x00" in text:
            raise InputError(f"{text!r}: not a file name")
        candidate = Path(text)
        if base is not None and not candidate.is_absolute():
            candidate = Path(base) / candidate
        resolved = Path(os.path.realpath(candidate))
        if not self.contains(resolved):
            raise InputError(f"{text}: outside the review's inputs and output folder; refused")
        return resolved

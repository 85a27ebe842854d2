"""Case lists for archive-scale runs: manifests too long for a command line, and case sizes from headers.

``--cases-from FILE`` reads one path a line (blank lines and ``#`` comments skipped);
``--cases-from FILE.csv:COLUMN`` reads that column of a CSV file. Relative paths are taken relative
to the manifest's folder, so a manifest travels with the archive it lists.

Sizes balance the ranks of a distributed run: they come from the image header alone (no pixel data
is read), so thousands of cases are sized in seconds.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import SimpleITK as sitk

from ..errors import InputError


def read_manifest(spec: str) -> list[Path]:
    """The paths a manifest lists, in its order; ``FILE`` or ``FILE:COLUMN`` (a CSV column)."""
    path, column = _split_spec(spec)
    if not path.is_file():
        raise InputError(f"--cases-from {spec}: {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"--cases-from {spec}: cannot read {path} ({error})") from None
    if column is None:
        entries = [line.strip() for line in text.splitlines()]
        entries = [e for e in entries if e and not e.startswith("#")]
    else:
        rows = list(csv.DictReader(text.splitlines()))
        if not rows or column not in rows[0]:
            found = ", ".join(rows[0]) if rows else "no rows"
            raise InputError(f"--cases-from {spec}: {path} has no column {column!r} (found: {found})")
        entries = [(row[column] or "").strip() for row in rows]
        empty = [index + 2 for index, entry in enumerate(entries) if not entry]
        if empty:
            raise InputError(f"--cases-from {spec}: {path} line {empty[0]} has an empty {column!r} cell")
    if not entries:
        raise InputError(f"--cases-from {spec}: {path} lists no cases")
    return [p if p.is_absolute() else path.parent / p for p in (Path(e) for e in entries)]


def _split_spec(spec: str) -> tuple[Path, str | None]:
    """``cases.csv:image`` names a column; a path that exists as given (even with a colon) does not."""
    whole = Path(spec)
    if whole.is_file():
        return whole, None
    name, separator, column = spec.rpartition(":")
    if separator and name and column and "/" not in column and "\\" not in column:
        return Path(name), column
    return whole, None


def voxel_count(path: Path) -> int:
    """Voxels of an image file or a DICOM series folder, from its header; 0 when it cannot be read.

    An unreadable case weighs nothing: it fails quickly on whichever rank gets it.
    """
    try:
        if path.is_dir():
            names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path))
            if not names:
                return 0
            return len(names) * _header_voxels(Path(names[0]))
        return _header_voxels(path)
    except (RuntimeError, OSError):
        return 0


def _header_voxels(path: Path) -> int:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return int(math.prod(reader.GetSize())) * int(reader.GetNumberOfComponents())


def balance(sizes: Sequence[int], parts: int) -> list[list[int]]:
    """Indices of ``sizes`` split into ``parts`` lists of nearly equal total size.

    Largest first, each to the least loaded part (ties to the lowest part): the classic greedy bound
    of 4/3 of the optimum, deterministic so every rank computes the same split. Each part keeps the
    input order, so logs and outputs follow the order the user gave.
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    loads = [0] * parts
    assignment: list[list[int]] = [[] for _ in range(parts)]
    for index in sorted(range(len(sizes)), key=lambda i: (-int(sizes[i]), i)):
        target = min(range(parts), key=lambda p: (loads[p], len(assignment[p]), p))
        assignment[target].append(index)
        loads[target] += max(int(sizes[index]), 1)
    return [sorted(part) for part in assignment]

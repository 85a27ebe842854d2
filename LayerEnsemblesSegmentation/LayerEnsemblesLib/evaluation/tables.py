"""Reading the evaluation's CSV files back, checked like any other user input.

``evaluate --report-only``, ``evaluate --resume`` and ``calibrate --from-csv`` read files a user may have
edited, truncated or taken from somewhere else. A missing column or a word where a number belongs is
refused here, in one line naming the file, the line and the column, instead of surfacing later as a
``KeyError`` or a NumPy conversion error in the middle of a report.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import InputError
from .scores import add_class_mean

TEXT_COLUMNS = frozenset({"method", "kind", "case", "condition", "shift", "device", "error"})
INTEGER_COLUMNS = ("severity", "skip_heads", "kept_heads")  # kept integral so a resumed file stays uniform


def read_csv(path: str | Path, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Rows with numbers as floats (empty cells as NaN) and the text columns as text.

    ``required`` columns must be in the header, and the text ones among them must be filled in on every
    row; a cell of any other column that is neither empty nor a number is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not found")
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            raw_rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: not a readable CSV file ({error})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(
            f"{path}: no column {', '.join(repr(c) for c in missing)} "
            f"(columns: {', '.join(header[:12]) or 'none'}{'...' if len(header) > 12 else ''})"
        )
    required = tuple(required)
    needed_text = [c for c in required if c in TEXT_COLUMNS]
    rows = []
    for line, row in enumerate(raw_rows, start=2):
        if None in row or any(v is None for v in row.values()):
            raise InputError(f"{path}, line {line}: the row does not have the header's {len(header)} columns")
        values: dict[str, Any] = {}
        for column, text in row.items():
            if column in TEXT_COLUMNS:
                values[column] = text
                continue
            number = _number(text)
            if number is None:
                raise InputError(f"{path}, line {line}: column {column!r} holds {text[:40]!r}, not a number")
            values[column] = number
        for column in needed_text:
            if not values[column].strip():
                raise InputError(f"{path}, line {line}: column {column!r} is empty")
        for column in INTEGER_COLUMNS:
            if isinstance(values.get(column), float) and math.isfinite(values[column]):
                values[column] = int(values[column])
            elif column in required:
                raise InputError(f"{path}, line {line}: column {column!r} needs a whole number")
        rows.append(add_class_mean(values))
    return rows


def _number(text: str) -> float | None:
    """The cell as a float (empty as NaN), or None when it is not a number."""
    if text is None or not text.strip():
        return math.nan
    try:
        return float(text)
    except ValueError:
        return None

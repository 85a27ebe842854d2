"""``evaluate`` under ``torchrun``: each rank evaluates its share of the cases; rank 0 writes the tables.

Each rank keeps its finished rows in its own hidden part files (``.cases.rank<R>.csv`` and
``.heads.rank<R>.csv``), rewritten after every case, so the work of a rank that dies is not lost:
``--resume`` reads those parts with ``cases.csv``. At the end the new rows are gathered and rank 0
writes ``cases.csv`` and ``heads.csv`` in the order one process would have written them (the cases'
order, each case's conditions and methods as they ran), then removes the parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

PART_PATTERN = ".{table}.rank{rank}.csv"


def part_path(out: Path, table: str, rank: int) -> Path:
    return out / PART_PATTERN.format(table=table, rank=rank)


def part_files(out: Path, table: str) -> list[Path]:
    """Every rank's leftover part of ``table`` (``cases`` or ``heads``), in rank order."""
    found = out.glob(PART_PATTERN.format(table=table, rank="*"))
    return sorted(found, key=lambda p: int(p.name.split(".rank")[1].split(".")[0]))


def in_case_order(rows: Sequence[dict[str, Any]], case_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Rows gathered from the ranks, back in the cases' order (stable: a case's own rows keep theirs)."""
    position = {case_id: index for index, case_id in enumerate(case_ids)}
    return sorted(rows, key=lambda row: position.get(row["case"], len(position)))


def remove_parts(out: Path) -> None:
    for table in ("cases", "heads"):
        for path in part_files(out, table):
            path.unlink(missing_ok=True)

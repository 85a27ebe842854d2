"""The cases of a review from its command-line inputs: image files, folders, earlier ``segment`` outputs.

A folder is either a folder of images (each image file directly in it is a case) or the output folder of
an earlier ``layer-ensembles segment`` run: there each ``<case>_report.json`` names the case's input image
and, when it was run with ``--save-heads``, its results bundle. Output images of such a run (``_seg``,
maps, corrections) are never taken for inputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..fileio import IMAGE_SUFFIXES, case_id_from_path
from .corrections import CORRECTED_SUFFIX

REPORT_SUFFIX = "_report.json"
OUTPUT_MARKERS = (
    "_seg",
    "_agreement",
    "_entropy",
    "_mutual_information",
    "_variance",
    "_probabilities",
    CORRECTED_SUFFIX,
)


@dataclass(frozen=True)
class ReviewInput:
    """One case: its name, its image file, and an earlier run's bundle when there is one."""

    name: str
    image: Path
    bundle: Path | None = None


def _is_output(path: Path) -> bool:
    name = case_id_from_path(path)
    return any(name.endswith(marker) or f"{marker}_" in name for marker in OUTPUT_MARKERS)


def _from_reports(folder: Path, reports: list[Path]) -> list[ReviewInput]:
    cases = []
    for report_path in reports:
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
            image = Path(report["input"])
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(f"{report_path}: unreadable segment report ({error})") from error
        bundle = report.get("bundle")
        bundle_path = Path(bundle) if bundle else None
        if bundle_path is not None and not bundle_path.is_absolute():
            bundle_path = folder / bundle_path
        name = report_path.name[: -len(REPORT_SUFFIX)]
        cases.append(ReviewInput(name, image, bundle_path if bundle_path and bundle_path.is_file() else None))
    return cases


def review_inputs(paths: list[str | Path]) -> list[ReviewInput]:
    """Every case named by the inputs, in the order given (folders sorted by name), each once."""
    cases: dict[str, ReviewInput] = {}
    for path in (Path(p) for p in paths):
        if path.is_dir():
            reports = sorted(path.glob(f"*{REPORT_SUFFIX}"))
            found = (
                _from_reports(path, reports)
                if reports
                else [
                    ReviewInput(case_id_from_path(p), p)
                    for p in sorted(path.iterdir())
                    if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES) and not _is_output(p)
                ]
            )
        elif path.exists():
            found = [ReviewInput(case_id_from_path(path), path)]
        else:
            raise InputError(f"{path}: no such file or folder")
        for case in found:
            cases.setdefault(case.name, case)
    if not cases:
        raise InputError(f"{', '.join(str(p) for p in paths)}: no image files to review")
    return list(cases.values())

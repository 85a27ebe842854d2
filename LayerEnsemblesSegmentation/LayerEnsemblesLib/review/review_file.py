"""The review file: every case's score, the model's and the reviewer's decision, and any correction.

Written to the review's output folder as ``review.json`` (the record the app reads back) and
``review.csv`` (for a spreadsheet) after every change, each under a temporary name renamed into place, so
closing the browser or killing the server loses nothing and never leaves half a file. Opening the same
folder again resumes the review from ``review.json``.

What a reviewer set is kept where it belongs: each case's kept heads and threshold in its record (a
case keeps the settings of the result it shows, and its AULA and decision depend on them), and the
review-wide display choice (the heatmap kind) in the JSON file's ``settings``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

from ..errors import InputError
from ..fileio import atomic_write_json, atomic_write_text

REVIEW_JSON = "review.json"
REVIEW_CSV = "review.csv"
FORMAT = "layer-ensembles-review"


@dataclass
class ReviewRecord:
    """One case's line of the review file."""

    case: str
    input: str = ""
    score: float | None = None  # normalised AULA of the shown result
    threshold: float | None = None
    model_decision: str = ""  # "accepted" / "flagged" by AULA against the threshold
    reviewer_decision: str = ""  # "", "accepted", "flagged" or "corrected"
    time: str = ""  # UTC, ISO 8601, of the reviewer's last change
    corrected_file: str = ""
    estimated_dice: float | None = None  # the model's quality map at the score (None: no calibration)
    bundle: str = ""  # the result's head outputs: a restarted review takes the case up from it
    kept_heads: str = ""  # "first-last", 1-based inclusive as the app shows them ("" before a result)


COLUMNS = tuple(field.name for field in fields(ReviewRecord))


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ReviewFile:
    """The records of one review folder, kept in case order, rewritten whole on every change."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.records: dict[str, ReviewRecord] = {}
        self.settings: dict[str, str] = {}  # review-wide choices, e.g. {"heatmap_kind": "entropy"}

    @property
    def json_path(self) -> Path:
        return self.folder / REVIEW_JSON

    @property
    def csv_path(self) -> Path:
        return self.folder / REVIEW_CSV

    @classmethod
    def open(cls, folder: str | Path) -> ReviewFile:
        """The folder's review so far (empty when it has none); a damaged file is one clear error."""
        review = cls(folder)
        if not review.json_path.is_file():
            return review
        try:
            document = json.loads(review.json_path.read_text(encoding="utf-8"))
            if document.get("format") != FORMAT:
                raise ValueError("not a LayerEnsembles review file")
            for item in document["cases"]:
                record = ReviewRecord(**{key: item.get(key) for key in COLUMNS if key in item})
                review.records[record.case] = record
            settings = document.get("settings") or {}
            if not isinstance(settings, dict):
                raise ValueError("'settings' is not an object")
            review.settings = {str(key): str(value) for key, value in settings.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise InputError(f"{review.json_path}: unreadable review file ({error})") from error
        return review

    def get(self, case: str) -> ReviewRecord | None:
        return self.records.get(case)

    def update(self, record: ReviewRecord) -> None:
        """Add or replace a case's record and write both files."""
        self.records[record.case] = record
        self.write()

    def write(self) -> None:
        rows = [asdict(record) for record in self.records.values()]
        atomic_write_json(
            self.json_path,
            {"format": FORMAT, "format_version": 1, "settings": dict(self.settings), "cases": rows},
            overwrite=True,
        )
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if value is None else value for key, value in row.items()})
        atomic_write_text(self.csv_path, buffer.getvalue(), overwrite=True)

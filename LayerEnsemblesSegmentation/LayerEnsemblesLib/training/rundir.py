"""The run folder's bookkeeping: replacing an old run safely and reading split/metrics files strictly.

``train --overwrite`` must not lose the old run to a new one that never starts (a missing dataset.json,
a bad label found while preprocessing): the old files are moved aside into a hidden folder and put back
if the new run fails before its first epoch; once optimisation starts they are deleted.

``train --resume`` reads ``split.json`` and ``metrics.jsonl`` before anything is written, and a damaged
file (a truncated JSON document, a half-written line left by a crash) is one line naming the file and
the place, with the folder left exactly as it was.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError

SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.jsonl"
ASIDE_FOLDER = ".replaced-run"


class ReplacedRun:
    """The previous run's files, moved aside until the new run has started."""

    def __init__(self, run_dir: Path, names: Sequence[str]) -> None:
        self.run_dir = Path(run_dir)
        self.names = list(names)
        self.aside = self.run_dir / ASIDE_FOLDER
        self.active = False

    def move_aside(self) -> None:
        if not self.names:
            return
        if self.aside.exists():  # left by a crash during an earlier replacement: that run is the old one
            raise InputError(
                f"{self.aside}: holds the files of a run replaced by an interrupted --overwrite; "
                "move them back or delete the folder first"
            )
        self.aside.mkdir(parents=True)
        for name in self.names:
            (self.run_dir / name).replace(self.aside / name)
        self.active = True

    def discard(self) -> None:
        """The new run has started: the old one is gone for good."""
        if self.active:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.active = False

    def restore(self, new_files: Sequence[str]) -> None:
        """The new run failed before it started: remove what it wrote and put the old files back."""
        if not self.active:
            return
        for name in new_files:
            (self.run_dir / name).unlink(missing_ok=True)
        for name in self.names:
            (self.aside / name).replace(self.run_dir / name)
        self.aside.rmdir()
        self.active = False


def read_split(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / SPLIT_FILE
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: missing; the run cannot be resumed without its split") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(
            f"{path}: damaged or truncated ({_reason(error)}); the run folder was not changed"
        ) from None
    lists_of_ids = isinstance(split, dict) and all(
        isinstance(split.get(key), list) and all(isinstance(i, str) for i in split[key])
        for key in ("train", "validation")
    )
    if not lists_of_ids or not split["train"]:
        raise InputError(f"{path}: not a split (needs 'train' and 'validation' lists of case ids)")
    return split


def check_metrics_log(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of ``metrics.jsonl``; a damaged line is refused (not silently dropped or kept)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: unreadable ({_reason(error)})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            epoch = record["epoch"]
        except (json.JSONDecodeError, TypeError, KeyError) as error:
            raise InputError(
                f"{path}: line {number} is damaged (half-written?: {_reason(error)}); remove it to resume, "
                "the run folder was not changed"
            ) from None
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            raise InputError(f"{path}: line {number} has no valid epoch number ({epoch!r})")
        records.append(record)
    return records


def run_guarded(replaced: ReplacedRun, new_files: Sequence[str], body: Callable[[], Path]) -> Path:
    """Run ``body``; if it fails while the old run is still aside, restore the old run."""
    try:
        return body()
    except BaseException:
        replaced.restore(new_files)
        raise


def _reason(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:120]

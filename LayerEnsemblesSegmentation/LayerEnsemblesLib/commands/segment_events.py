"""``segment --progress-json``: the run as JSON lines on stdout, for a parent process to follow.

The Slicer module and the web review app run the engine in a child process (a CUDA or torch crash
must not take the application with it, and a Python thread inside Slicer only advances while the main
thread runs Python). The parent reads one JSON object per line from the child's stdout:

``started``, ``case_started``, ``progress``, ``warning``, ``case_done``, ``case_failed``, ``error``
and ``finished``; the fields are listed in ``/README.md`` and tested in ``Testing/test_engine_process.py``.

Only events reach stdout: while the run lasts, file descriptor 1 and ``sys.stdout`` point to stderr,
so a stray print (from Python or from a native library) cannot break the stream.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ..errors import InputError, first_line

PROGRESS_INTERVAL_SECONDS = 0.1  # at most ten progress events a second per case (first and last always)


class JsonEvents:
    """The segment command's progress interface, writing JSON lines instead of progress bars."""

    def __init__(self, stream: IO[str], total: int) -> None:
        self._stream = stream
        self.total = total
        self.index = -1
        self.case: str | None = None
        self._last_progress = -math.inf

    def emit(self, event: str, **fields: Any) -> None:
        self._stream.write(json.dumps({"event": event, **fields}, default=str, allow_nan=False) + "\n")
        self._stream.flush()

    # -- the interface segment.run drives (shared with its progress bars) ----------------------------
    def started(self, model: str, device: str) -> None:
        self.emit("started", pid=os.getpid(), cases=self.total, model=model, device=device)

    def window_callback(self, case: str) -> Callable[[float, str], None]:
        self.index += 1
        self.case = case
        self._last_progress = -math.inf
        self.emit("case_started", case=case, index=self.index, total=self.total)
        index = self.index

        def update(fraction: float, message: str) -> None:
            now = time.monotonic()
            if 0.0 < fraction < 1.0 and now - self._last_progress < PROGRESS_INTERVAL_SECONDS:
                return
            self._last_progress = now
            overall = (index + fraction) / max(self.total, 1)
            self.emit(
                "progress",
                case=case,
                index=index,
                total=self.total,
                fraction=round(float(fraction), 4),
                overall=round(overall, 4),
                message=message,
            )

        return update

    def case_result(self, case: str, path: Path, report: dict[str, Any]) -> None:
        for message in report.get("warnings", []):
            self.emit("warning", case=case, message=message)
        score = report.get("score")
        self.emit(
            "case_done",
            case=case,
            input=str(path),
            index=self.index,
            outputs={name: _absolute(p) for name, p in report.get("outputs", {}).items()},
            bundle=_absolute(report["bundle"]) if report.get("bundle") else None,
            report=_absolute(report["report"]),
            decision=report["decision"],
            score=None if score is None or not math.isfinite(score) else score,
            score_name=report.get("score_name"),
            threshold=report["threshold"],
            estimated_dice=report.get("estimated_dice"),
            estimated_dice_text=report.get("estimated_dice_text"),
        )

    def case_skipped(self, case: str, path: Path, report: dict[str, Any]) -> None:
        """A case finished by an earlier run reaches the listener like a fresh one."""
        self.case_result(case, path, report)

    def notice(self, line: str) -> None:
        self.emit("warning", case=None, message=_one_line(line))

    def case_failed(self, case: str, path: Path, message: str) -> None:
        if self.case != case:  # failed before its first progress callback (e.g. duplicate case name)
            self.index += 1
            self.case = case
        self.emit("case_failed", case=case, input=str(path), index=self.index, error=_one_line(message))

    def finished(self, succeeded: int, failed: int, summary: Path | None) -> None:
        self.emit(
            "finished", succeeded=succeeded, failed=failed, summary=_absolute(summary) if summary else None
        )

    def case_done(self) -> None:
        """Nothing to draw (the bars' hook)."""

    def write(self, line: str) -> None:
        """Human lines are not events."""

    def error(self, message: str) -> None:
        """Errors arrive through :meth:`case_failed`."""

    def close(self) -> None:
        """Nothing to close; :meth:`finished` ends the stream."""


def run_with_events(args, run: Callable[[Any, Any], int]) -> int:
    """Run ``run(args, events)`` with stdout reserved for the events; a run-level failure becomes an event."""
    sys.stdout.flush()
    saved_fd = os.dup(1)
    stream = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    saved_stdout = sys.stdout
    os.dup2(2, 1)  # native prints go to stderr from now on
    sys.stdout = sys.stderr
    events = JsonEvents(stream, len(args.inputs))
    try:
        return run(args, events)
    except InputError as error:
        events.emit("error", error=_one_line(str(error)))
        raise
    except Exception as error:  # noqa: BLE001 - reported as one line, then the usual traceback on stderr
        events.emit("error", error=_one_line(f"{type(error).__name__}: {first_line(error)}"))
        raise
    finally:
        sys.stdout.flush()
        sys.stdout = saved_stdout
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
        stream.close()


def _one_line(message: str) -> str:
    return " ".join(message.split())[:500]


def _absolute(path: str | Path) -> str:
    return str(Path(path).absolute())

"""``segment``'s terminal progress: tqdm bars over cases and windows, one line per case result.

Apart from :mod:`.segment_events` (the JSON lines a parent process reads) because a person at a terminal
wants bars and sentences, and tqdm is an optional extra: without it the same lines go to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path


class TerminalProgress:
    """tqdm bars over cases and over one case's windows; plain stderr lines when tqdm is missing."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.enabled = enabled
        self._tqdm = None
        self._cases = None
        self._windows = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm is an optional extra
                tqdm = None
            self._tqdm = tqdm
            if tqdm is not None:
                self._cases = tqdm(total=total, unit="case", desc="cases", file=sys.stderr, position=0)

    def window_callback(self, case: str):
        if self._tqdm is None:
            return None
        self._close_windows()
        self._windows = self._tqdm(
            total=100,
            desc=case,
            unit="%",
            leave=False,
            file=sys.stderr,
            position=1,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}",
        )

        def update(fraction: float, message: str) -> None:
            bar = self._windows
            if bar is not None:
                bar.n = int(round(100 * fraction))
                bar.set_postfix_str(message, refresh=False)
                bar.refresh()

        return update

    def started(self, model: str, device: str) -> None:
        """Nothing to say before the first case (the bars start with it)."""

    def case_result(self, case: str, path: Path, report: dict) -> None:
        self.write(
            f"{case}: {report['decision']} (normalised AULA {_text(report['score'])}, "
            f"threshold {report['threshold']:.3f} from {report['threshold_source']}; "
            f"{report['estimated_dice_text']})"
        )

    def case_skipped(self, case: str, path: Path, report: dict) -> None:
        self.write(f"{case}: done earlier, {report['decision']} (normalised AULA {_text(report['score'])})")

    def case_failed(self, case: str, path: Path, message: str) -> None:
        self.error(message)

    def finished(self, succeeded: int, failed: int, summary: Path | None) -> None:
        """The summary line is the per-case lines above."""

    def case_done(self) -> None:
        self._close_windows()
        if self._cases is not None:
            self._cases.update(1)

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def error(self, message: str) -> None:
        self.notice(f"error: {message}")

    def notice(self, line: str) -> None:
        """A line shown even with --quiet: errors, and files about to be replaced."""
        if self._tqdm is not None:
            self._tqdm.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        self._close_windows()
        if self._cases is not None:
            self._cases.close()

    def _close_windows(self) -> None:
        if self._windows is not None:
            self._windows.close()
            self._windows = None


def _text(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"

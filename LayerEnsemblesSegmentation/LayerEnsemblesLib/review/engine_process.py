"""The engine in a child process: start it, follow its JSON-lines events, cancel it by terminating it.

Inside Slicer a Python thread shares the interpreter with PythonQt, which keeps the GIL while the main
thread idles in Qt, so a worker thread only advances while the main thread runs Python, and a CUDA or
torch crash would take the application with it. SlicerMONAIAuto3DSeg and SlicerNNUnet therefore run
inference in a separate process; so does this module. :class:`EngineProcess` starts
``layer-ensembles segment --progress-json --save-heads`` with a given Python (``PythonSlicer`` in
Slicer, ``sys.executable`` elsewhere), writing into a temporary folder it owns. Two reader threads
turn the child's stdout into events and keep the tail of its stderr; :meth:`EngineProcess.poll` hands
the events over without blocking, so a GUI timer can drive it. A child that dies without saying
``finished`` becomes exactly one ``error`` event whose message is one line.

No Qt and no slicer import: the review controller and the web app use the same class, and the tests
run it with real child processes.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the folder holding LayerEnsemblesLib
# The engine runs below the GUI's priority: on a machine with few cores its network pass would otherwise
# take the CPU from the views the reviewer is looking at (Slicer's, or the web app's server and browser).
ENGINE_NICENESS = 5
# -c rather than -m: a launcher such as PythonSlicer may set its own PYTHONPATH
CHILD_PROGRAM = (
    f"import os, sys; hasattr(os, 'nice') and os.nice({ENGINE_NICENESS}); "
    "sys.path.insert(0, sys.argv.pop(1)); "
    "from LayerEnsemblesLib.cli import main; sys.exit(main(sys.argv[1:]))"
)
BELOW_NORMAL_PRIORITY = getattr(subprocess, "BELOW_NORMAL_PRIORITY_CLASS", 0)  # the same on Windows
STDERR_LINES_KEPT = 50
DEFAULT_GRACE_SECONDS = 3.0


class EngineProcess:
    """One child process segmenting ``inputs`` (image files) with ``model``; it starts at once."""

    def __init__(
        self,
        inputs: Sequence[str | Path],
        model: str | Path,
        *,
        device: str = "auto",
        head_range: Sequence[int | None] | None = None,
        skip_heads: int | None = None,
        threshold: float | None = None,
        maps: Sequence[str] = ("agreement",),
        save_heads: bool = True,
        window: Sequence[int] | None = None,
        memory_budget_gb: float | None = None,
        head_precision: str = "float32",
        python_executable: str | Path | None = None,
        work_dir: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not inputs:
            raise ValueError("EngineProcess needs at least one input file")
        self.output_dir = Path(tempfile.mkdtemp(prefix="layer-ensembles-run-", dir=work_dir))
        arguments = ["segment", "--model", str(model), "--out", str(self.output_dir)]
        arguments += ["--device", device, "--maps", ",".join(maps) or "none", "--progress-json", "--quiet"]
        if save_heads:
            arguments += ["--save-heads", "--head-precision", head_precision]
        if head_range is not None:
            first, stop = head_range
            arguments += ["--heads", f"{int(first or 0)}:{'' if stop is None else int(stop)}"]
        if skip_heads is not None:
            arguments += ["--skip-heads", str(int(skip_heads))]
        if threshold is not None:
            arguments += ["--threshold", repr(float(threshold))]
        if window is not None:
            arguments += ["--window", ",".join(str(int(w)) for w in window)]
        if memory_budget_gb is not None:
            arguments += ["--memory-budget", repr(float(memory_budget_gb))]
        arguments += ["--", *map(str, inputs)]  # an input named like an option stays an input
        python = str(python_executable or sys.executable)
        self.command = [python, "-c", CHILD_PROGRAM, str(PACKAGE_PARENT), *arguments]
        self.returncode: int | None = None
        self.cancelled = False
        self._events: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)
        self._finished_or_failed = False  # a "finished" or "error" event came from the child
        self._done = False
        child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
        try:
            self._process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                encoding="utf-8",
                errors="replace",
                env=child_env,
                # no console window on Windows
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0) | BELOW_NORMAL_PRIORITY,
            )
        except OSError as error:
            shutil.rmtree(self.output_dir, ignore_errors=True)
            raise OSError(f"{python}: cannot start the engine process ({error.strerror or error})") from None
        self._readers = [
            threading.Thread(target=self._read_events, args=(self._process.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self._process.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def done(self) -> bool:
        """True once the child has exited and :meth:`poll` has delivered its last event."""
        return self._done

    def poll(self) -> list[dict[str, Any]]:
        """The events that arrived since the last call; never blocks."""
        if self._done:
            return []
        events = self._drain()
        if self._process.poll() is not None and not any(r.is_alive() for r in self._readers):
            events += self._drain()  # what the readers queued before they ended
            self.returncode = self._process.returncode
            if not self._finished_or_failed:
                events.append(
                    {"event": "error", "error": self._crash_reason(), "returncode": self.returncode}
                )
            self._done = True
        return events

    def wait(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Block until the child exits (or ``timeout`` seconds pass); return the events not yet polled."""
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.poll()
        for reader in self._readers:
            reader.join()
        return self.poll()

    def cancel(self, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> None:
        """Terminate the child (kill it after ``grace_seconds``) and remove its output folder."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for reader in self._readers:
            reader.join()
        self.returncode = self._process.returncode
        self.cancelled = True
        self._done = True
        self._drain()
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the output folder (move or load what you keep first)."""
        shutil.rmtree(self.output_dir, ignore_errors=True)

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._done or self._process.poll() is None:
            self.cancel()

    # ----------------------------------------------------------------------------------------------
    def _drain(self) -> list[dict[str, Any]]:
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def _read_events(self, stream: IO[str]) -> None:
        for line in stream:
            text = line.strip()
            if not text:
                continue
            try:
                event = json.loads(text)
            except json.JSONDecodeError:
                event = None
            if not isinstance(event, dict) or "event" not in event:
                self._stderr_tail.append(text)  # not ours: keep it as a clue, never as an event
                continue
            if event["event"] in ("finished", "error"):
                self._finished_or_failed = True
            self._events.put(event)
        stream.close()

    def _read_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            if line.strip():
                self._stderr_tail.append(line.strip())
        stream.close()

    def _crash_reason(self) -> str:
        """One line: the child's last words on stderr, else how it ended."""
        code = self.returncode
        for line in reversed(self._stderr_tail):
            if line.startswith("error: "):
                return line[len("error: ") :]
        if self._stderr_tail:
            return self._stderr_tail[-1][:500]
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"the engine process was stopped by {name}"
        return f"the engine process ended with exit code {code} before finishing"

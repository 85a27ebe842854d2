"""One run of the engine in a child process, seen from the controller: its inputs and its bookkeeping.

The child (``EngineProcess``) reads files and writes files; the scene is never touched off the main
thread. So the controller snapshots each case on the main thread (a volume's voxels and geometry, or a
file path), writes the part to segment to a temporary file, and keeps the full image as the reference the
results are put back into. What the run has committed to the scene is recorded (a ``Batch``), so that a
cancel can take it back out, and the scene it was committed to is remembered, so that nothing is ever
removed from another scene after a close.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from ..fileio import atomic_write_image
from ..scene import Batch, CaseInput, load_case_image
from .state import DONE, QUEUED, QueuedCase

# (inputs, model, device, head_range, threshold, maps, python_executable, work_dir) -> an EngineProcess
EngineFactory = Callable[..., Any]


def default_engine_factory(**arguments) -> Any:
    from .engine_process import EngineProcess

    return EngineProcess(**arguments)


@dataclass
class PendingCase:
    """A case handed to the child: the file it reads, and what the commit needs back on the main thread."""

    case: CaseInput
    input_file: str
    reference: sitk.Image | None = None  # None for a file case: read again at commit time
    crop_index: tuple[int, int, int] | None = None
    fraction: float = 0.0
    status: str = QUEUED  # QUEUED, RUNNING, DONE or FAILED
    message: str = ""

    def reference_and_crop(self) -> tuple[sitk.Image, tuple[int, int, int] | None]:
        if self.reference is None:
            _, self.reference, self.crop_index = load_case_image(self.case)
        return self.reference, self.crop_index


@dataclass
class Run:
    """A running child process and everything the controller must undo or finish for it."""

    process: Any
    pending: list[PendingCase]
    work_dir: Path
    model_path: str
    kept_heads: tuple[int, int]
    threshold: float
    heatmap_kind: str
    batch: Batch | None = None
    scene_id: int = 0  # id() of the scene the run commits into: a closed scene is never rolled back
    committed: list[str] = field(default_factory=list)  # segmentation IDs, in commit order
    failures: list[str] = field(default_factory=list)  # "case: one line"
    warnings: list[str] = field(default_factory=list)
    fatal: str = ""

    def find(self, event: dict) -> PendingCase | None:
        """The pending case an event is about (by input file, else by index)."""
        wanted = str(event.get("input") or "")
        for pending in self.pending:
            if wanted and Path(wanted).resolve() == Path(pending.input_file).resolve():
                return pending
        index = event.get("index")
        if isinstance(index, int) and 0 <= index < len(self.pending):
            return self.pending[index]
        return None

    def queue(self) -> list[QueuedCase]:
        """The cases still without a result, in run order, for the worklist to show while it runs."""
        return [
            QueuedCase(p.case.name, p.status, p.fraction, p.message) for p in self.pending if p.status != DONE
        ]

    @property
    def progress(self) -> float:
        return sum(p.fraction for p in self.pending) / max(len(self.pending), 1)

    def discard_files(self) -> None:
        cleanup = getattr(self.process, "cleanup", None)
        if cleanup is not None:
            cleanup()
        shutil.rmtree(self.work_dir, ignore_errors=True)


def _file_name(position: int, name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "case"
    return f"{position:03d}_{safe}.nrrd"


def prepare_inputs(cases: list[CaseInput]) -> tuple[Path, list[PendingCase]]:
    """Write what each case segments to a temporary folder (main thread: the snapshots are in memory).

    A file case without an ROI is handed to the child as it is; everything else (scene volumes, ROI
    crops) is written as NRRD, which keeps the geometry exactly.
    """
    work_dir = Path(tempfile.mkdtemp(prefix="layer-ensembles-run-"))
    pending = []
    try:
        for position, case in enumerate(cases):
            if case.image is None and case.roi_corners is None:
                pending.append(PendingCase(case, str(Path(case.path).resolve())))
                continue
            image, reference, crop_index = load_case_image(case)
            target = work_dir / _file_name(position, case.name)
            # uncompressed: the child reads it once, and gzip took 1.5 s of the GUI's thread on 256x256x160
            atomic_write_image(target, image, compress=False)
            pending.append(PendingCase(case, str(target), reference, crop_index))
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    return work_dir, pending

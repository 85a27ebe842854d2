"""What a review GUI shows, as plain data: the controller owns it, every GUI only displays it.

Kept heads are 1-based and inclusive, ``(first, last)``, as the panel's range slider shows them; the
engine's ``head_range`` is ``(first - 1, last)``. A case's own settings (model, heads, threshold) are those
of the result it shows, which can differ from the run settings after the user loads another model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Where a case's current decision comes from.
SOURCE_MODEL = "model"
SOURCE_ACCEPTED = "accepted by reviewer"
SOURCE_FLAGGED = "flagged by reviewer"
SOURCE_CORRECTED = "corrected"
DECISION_SOURCES = (SOURCE_MODEL, SOURCE_ACCEPTED, SOURCE_FLAGGED, SOURCE_CORRECTED)

# A case's progress through a run.
QUEUED, RUNNING, DONE, FAILED, CANCELLED, RESTORED = (
    "queued",
    "running",
    "done",
    "failed",
    "cancelled",
    "restored",
)


@dataclass
class ModelInfo:
    """The loaded model file and what the GUI needs from its metadata."""

    path: str
    name: str
    head_count: int
    default_heads: tuple[int, int]  # 1-based inclusive
    threshold: float  # calibrated (or the engine's default)
    summary: str  # the text `layer-ensembles info` prints
    head_names: tuple[str, ...] = ()


@dataclass
class CaseState:
    """One case of the review: where it is in the scene and what model and reviewer decided."""

    name: str
    input_id: str | None = None
    path: str | None = None  # a file case of a folder worklist
    status: str = QUEUED
    segmentation_id: str | None = None
    model_name: str = ""
    model_path: str = ""
    kept_heads: tuple[int, int] | None = None  # 1-based inclusive, the shown result's own
    threshold: float | None = None
    score: float | None = None
    model_decision: str = ""  # "accepted" / "flagged" (AULA vs threshold)
    reviewer_decision: str = ""  # "" until the reviewer acts: "accepted" / "flagged" / "corrected"
    decision_source: str = SOURCE_MODEL
    bundle_path: str = ""
    estimated_dice: float | None = None  # the model's quality map at this result's score, if calibrated
    estimated_dice_text: str = ""  # "estimated Dice 0.84 (0.78–0.88)", or why there is none
    error: str = ""  # one line, when status is FAILED

    @property
    def decision(self) -> str:
        """The decision that counts: the reviewer's when there is one, else the model's."""
        return self.reviewer_decision or self.model_decision


@dataclass
class QueuedCase:
    """A case of the run that has no result yet: the worklist shows it as queued or segmenting."""

    name: str
    status: str = QUEUED  # QUEUED, RUNNING (being segmented in the child) or FAILED
    fraction: float = 0.0  # 0..1 of this case
    message: str = ""  # the child's last progress line for it


@dataclass
class RunState:
    running: bool = False
    progress: float = 0.0  # 0..1 over the whole run
    message: str = ""
    batch: bool = False
    cases: list[QueuedCase] = field(default_factory=list)  # the run's cases not in ReviewState.cases yet


@dataclass
class ReviewState:
    """Everything a review GUI displays. Change it only through ReviewController's actions."""

    model: ModelInfo | None = None
    model_path: str = ""
    device: str = "auto"
    devices: list[tuple[str, str]] = field(
        default_factory=lambda: [("Auto (GPU if available)", "auto"), ("CPU", "cpu")]
    )
    torch_summary: str = ""
    kept_heads: tuple[int, int] | None = None  # 1-based inclusive; None until a model is loaded
    threshold: float | None = None
    heatmap_kind: str = "agreement"
    heatmap_opacity: float = 0.5
    cases: list[CaseState] = field(default_factory=list)
    current: int | None = None  # index into ``cases``
    region_index: int = -1  # the uncertain region last jumped to (0-based), -1 none
    region_count: int = 0
    correcting: bool = False  # a segment editor edits the shown case: its kept heads are locked
    run: RunState = field(default_factory=RunState)
    status: str = ""  # one line for a status label
    last_error: str = ""  # the last error event's line
    error_from_action: bool = False  # last_error is an action's refusal: cleared when an action succeeds

    @property
    def current_case(self) -> CaseState | None:
        return (
            self.cases[self.current]
            if self.current is not None and 0 <= self.current < len(self.cases)
            else None
        )

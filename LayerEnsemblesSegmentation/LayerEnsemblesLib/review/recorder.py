"""The review file kept in step with the controller, and a reopened review folder taken up again.

``sync`` turns the controller's cases into review-file records and rewrites the file only when a record
changed; the time of a record is the time of the reviewer's last change. ``resume`` gives cases the
decisions (and corrected segmentations) the folder's review file holds from an earlier server, once they
have been segmented again, so a restarted server shows the review where it was left: with each case's
kept heads and threshold (its AULA and model decision follow from them) and the review's heatmap kind.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..fileio import read_image
from ..scene.segmentation import CONTENT_HASH_ATTRIBUTE, write_segments
from .review_file import ReviewFile, ReviewRecord, now_utc
from .state import DONE, RESTORED

FINISHED = (DONE, RESTORED)


class ReviewRecorder:
    def __init__(self, review: ReviewFile):
        self.review = review
        self.inputs: dict[str, str] = {}  # case name -> image file
        self._earlier = set(review.records)  # cases an earlier server recorded: to be given back
        self._resumed: set[str] = set()
        self._settings_restored = False  # until then ``sync`` leaves the recorded settings alone
        self.errors: list[str] = []  # one line each, for the GUI

    @classmethod
    def open(cls, folder: str | Path) -> ReviewRecorder:
        return cls(ReviewFile.open(folder))

    def get(self, case: str) -> ReviewRecord | None:
        return self.review.get(case)

    def _record(self, case) -> ReviewRecord:
        old = self.review.get(case.name)
        corrected = old.corrected_file if old is not None else ""
        changed = old is None or old.reviewer_decision != case.reviewer_decision
        return ReviewRecord(
            case=case.name,
            input=self.inputs.get(case.name, case.path or (old.input if old else "")),
            score=case.score,
            threshold=case.threshold,
            model_decision=case.model_decision,
            reviewer_decision=case.reviewer_decision,
            time=(now_utc() if case.reviewer_decision else "") if changed else old.time,
            corrected_file=corrected,
            estimated_dice=case.estimated_dice,
            bundle=case.bundle_path,
            kept_heads=heads_text(case.kept_heads),
        )

    def sync(self, state) -> bool:
        """Write the review file when a finished case's record differs from the file; True if written."""
        changed = False
        for case in state.cases:
            if case.status not in FINISHED or case.name in self.pending_names(state):
                continue
            record = self._record(case)
            if record != self.review.get(case.name):
                self.review.records[case.name] = record
                changed = True
        settings = {"heatmap_kind": state.heatmap_kind}
        if self._settings_restored and settings != self.review.settings:
            self.review.settings = settings
            changed = True
        if changed:
            self.review.write()
        return changed

    def note_correction(self, case: str, path: str) -> None:
        record = self.review.get(case) or ReviewRecord(case, self.inputs.get(case, ""))
        record.corrected_file, record.reviewer_decision, record.time = path, "corrected", now_utc()
        self.review.update(record)

    # -- resuming --------------------------------------------------------------------------------------

    def restore_settings(self, controller) -> None:
        """The review-wide settings of an earlier server (the heatmap kind), before any case is shown."""
        kind = self.review.settings.get("heatmap_kind")
        if kind and kind != controller.state.heatmap_kind:
            if controller.set_heatmap(kind=kind) is None and controller.state.heatmap_kind != kind:
                self.errors.append(f"{self.review.json_path}: heatmap kind {kind!r} not restored")
        self._settings_restored = True

    def pending_names(self, state) -> set[str]:
        """Finished cases whose earlier reviewer decision or settings have not been given back yet."""
        pending = set()
        for case in state.cases:
            record = self.review.get(case.name)
            if (
                case.status in FINISHED
                and case.name in self._earlier
                and case.name not in self._resumed
                and record is not None
                and (
                    (record.reviewer_decision and not case.reviewer_decision)
                    or _settings_differ(case, record)
                )
            ):
                pending.add(case.name)
        return pending

    def pending_resume(self, state) -> bool:
        return not state.run.running and bool(self.pending_names(state))

    def resume(self, controller, context) -> None:
        """Give each pending case its recorded decision (and corrected segmentation), then show the case
        that was shown before."""
        state = controller.state
        shown = state.current
        for name in sorted(self.pending_names(state)):
            try:
                self._resume_case(controller, context, name)
            finally:  # marked only now: until then ``sync`` leaves the case's record alone
                self._resumed.add(name)
        if shown is not None and shown < len(state.cases):
            controller.open_case(shown)

    def _resume_case(self, controller, context, name: str) -> None:
        state = controller.state
        index = next(i for i, case in enumerate(state.cases) if case.name == name)
        record = self.review.get(name)
        if not controller.open_case(index):
            return
        # The settings first: recombining rewrites the model's segmentation, the correction goes over it.
        heads = parse_heads(record.kept_heads)
        if heads is not None and heads != state.cases[index].kept_heads:
            controller.set_kept_heads(*heads)
        if _threshold_differs(state.cases[index].threshold, record.threshold):
            controller.set_threshold(record.threshold)
        if record.reviewer_decision == "corrected" and record.corrected_file:
            try:
                self._load_correction(context, state.cases[index], record.corrected_file)
            except InputError as error:
                self.errors.append(f"{name}: earlier correction not restored ({error})")
                return
        if record.reviewer_decision == "accepted":
            controller.accept()
        elif record.reviewer_decision == "flagged":
            controller.flag()
        elif record.reviewer_decision == "corrected" and not state.cases[index].reviewer_decision:
            controller.mark_corrected()

    @staticmethod
    def _load_correction(context, case, path: str) -> None:
        """The corrected label map into the case's segmentation, marked as edited (never recombined over)."""
        segmentation = context.node(case.segmentation_id)
        if segmentation is None:
            return
        from .corrections import class_values

        labels = read_image(path)
        classes = [_Class(value) for value in class_values(segmentation)]
        write_segments(segmentation, labels, classes)
        segmentation.SetAttribute(CONTENT_HASH_ATTRIBUTE, "reviewer correction " + Path(path).name)


class _Class:
    """What ``write_segments`` reads of a class: its value (segments already exist with their names)."""

    def __init__(self, value: int):
        self.value, self.name, self.color = value, f"class_{value}", (128, 128, 128)


def heads_text(heads: tuple[int, int] | None) -> str:
    """Kept heads as the review file writes them: "first-last", 1-based inclusive."""
    return f"{heads[0]}-{heads[1]}" if heads else ""


def parse_heads(text: str | None) -> tuple[int, int] | None:
    """``heads_text`` read back; None for an empty or unreadable value (the case keeps its own)."""
    try:
        first, last = (int(part) for part in str(text or "").split("-"))
    except ValueError:
        return None
    return (first, last) if 1 <= first <= last else None


def _threshold_differs(current: float | None, recorded: float | None) -> bool:
    return recorded is not None and (current is None or abs(float(current) - float(recorded)) > 1e-9)


def _settings_differ(case, record: ReviewRecord) -> bool:
    """The record holds other kept heads or another threshold than the case shows (a restart)."""
    heads = parse_heads(record.kept_heads)
    return (heads is not None and heads != case.kept_heads) or _threshold_differs(
        case.threshold, record.threshold
    )

"""The review half of the controller: recombine, navigate, decide, hand off, save, restore.

A result's settings are its own: kept heads and threshold change the shown case only when it was made
with the loaded model (or no model is loaded, as after reopening a scene). Otherwise the shown result
keeps its model's heads, threshold and score until it is segmented again (defect 4). Recombination reads
the case's results bundle when its head outputs are not in memory (a reopened scene).
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
from pathlib import Path

from ..errors import InputError, first_line
from ..scene import (
    find_uncertain_regions,
    grid_from_volume,
    image_from_volume,
    is_user_edited,
    jump_to_region,
    recombine_result,
    runtime,
    set_heatmap_opacity,
    show_result,
)
from ..scene.heatmaps import HEATMAP_KINDS, HEATMAP_LABELS
from ..scene.results import add_heatmap, find_pending_regions
from ..scene.surfaces import show_in_3d
from . import cases as scene_cases
from .corrections import save_correction as write_correction
from .models import same_model

log = logging.getLogger(__name__)
BUNDLE_SUBFOLDER = "LayerEnsembles bundles"
EDITING_REFUSAL = "kept heads not changed: save the correction being edited first"


def action(method):
    """Run an action; any failure becomes one line in an "error" event instead of an exception.

    An action's refusal ("kept heads are locked while a correction is open") stays shown only until an
    action succeeds: by then it no longer describes the review, and a GUI that kept showing it would
    report a problem the reviewer has already dealt with. A run's failures are not cleared this way.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            result = method(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - reported to the GUI in one line
            if not isinstance(error, InputError):
                log.exception("LayerEnsembles: %s failed", method.__name__)
            self._report_error(runtime.explain_error(error), from_action=True)
            return None
        if result is not None and result is not False and self.state.error_from_action:
            self.state.last_error, self.state.error_from_action = "", False
            self._emit("state_changed", self.state)
        return result

    return wrapper


class ReviewActions:
    """Mixed into ReviewController; uses its ``state``, ``context``, ``_results`` and ``_references``."""

    # -- helpers ---------------------------------------------------------------------------------------

    def _current(self):
        case = self.state.current_case
        if case is None:
            raise InputError("no case is shown: segment a volume or open a case first")
        return case, self._results[case.segmentation_id]

    def _settings_apply_to(self, case) -> bool:
        return self.state.model is None or same_model(case.model_path, self.state.model.path)

    def _loaded(self, case, result):
        """The result with its prediction in memory: from this session, else from its results bundle."""
        if result.prediction is None:
            from ..inference.bundle import load_bundle

            segmentation = self.context.node(result.segmentation_id)
            prediction = load_bundle(scene_cases.resolve_bundle(self.context, segmentation), device="cpu")
            result.prediction, result.metadata = prediction, prediction.metadata
        return result

    def _reference(self, result):
        reference = self._references.get(result.segmentation_id)
        if reference is None:
            reference = grid_from_volume(self.context.node(result.input_id))
            self._references[result.segmentation_id] = reference
        return reference

    # A GUI with an event loop sets this: a kept-heads change then shows the slice views first and leaves
    # the uncertain regions and the 3D view to ``finish_redraw``, which the GUI runs right after.
    redraw_in_two_parts = False
    _pending_redraw = None

    @property
    def redraw_pending(self) -> bool:
        """True while the second part of a redraw shown in two parts is still to run."""
        return self._pending_redraw is not None

    @action
    def finish_redraw(self) -> bool:
        """The second part of a kept-heads change shown in two parts: the uncertain regions and the 3D
        view (segment surfaces, uncertain region). The scene is then as a change in one part leaves it.
        Returns whether anything was pending."""
        result, self._pending_redraw = self._pending_redraw, None
        if result is None or self.context.node(result.segmentation_id) is None:
            return False
        find_pending_regions(self.context, result)
        show_in_3d(self.context, result)
        case = self.state.current_case
        if case is not None and self._results.get(case.segmentation_id) is result:
            self.state.region_count, self.state.region_index = len(result.regions), result.region_cursor
        self._changed()
        runtime.release_freed_memory()  # the surfaces' and regions' working buffers
        return True

    def _recombine(self, case, result, two_parts: bool = False, **settings) -> None:
        result = self._loaded(case, result)
        old_id = result.segmentation_id
        old_node = self.context.node(old_id)
        references = {
            key: old_node.GetAttribute(key)
            for key in (
                scene_cases.BUNDLE_ATTRIBUTE,
                scene_cases.MODEL_PATH_ATTRIBUTE,
                scene_cases.CROP_ATTRIBUTE,
            )
        }
        two_parts = two_parts and self.redraw_in_two_parts
        with runtime.torch_threads(1):  # a few heads of one case: threads cost more than they give
            recombine_result(
                self.context, result, self._reference(result), regions_now=not two_parts, **settings
            )
        segmentation = self.context.node(result.segmentation_id)
        if result.segmentation_id != old_id:  # the old one was edited by the reviewer: kept as it is
            for key, value in references.items():
                segmentation.SetAttribute(key, value or "")
            self._results[result.segmentation_id] = self._results.pop(old_id)
            self._references[result.segmentation_id] = self._references.pop(old_id)
            self.state.status = (
                "The segmentation had been edited, so it was kept; the result is in a new node."
            )
        if case.reviewer_decision and result.segmentation_id == old_id:
            scene_cases.write_review(segmentation, case.reviewer_decision)  # the reviewer's status stays
        updated = scene_cases.case_state_from_node(
            segmentation, self.context.node(result.input_id), case.status
        )
        self.state.cases[self.state.cases.index(case)] = updated
        worklist = self._worklist
        if worklist is not None and result in worklist.cases:
            worklist.refresh()
        self._show(updated, result, three_d=not two_parts)
        self._pending_redraw = result if two_parts else None
        runtime.release_freed_memory()  # the full-volume buffers of the old result

    def _show(self, case, result, three_d: bool = True) -> None:
        show_result(self.context, result, self.state.heatmap_opacity)
        if three_d:
            self.finish_redraw()  # a change shown since leaves nothing half done
            show_in_3d(self.context, result)
        self.state.region_count, self.state.region_index = len(result.regions), result.region_cursor
        self._changed()
        self._emit("result_shown", case)

    def prediction(self, index: int | None = None):
        """The engine's Prediction behind a case (the shown one by default), read from its bundle if needed.

        For what the state does not carry: per-class AULA, the agreement curve, the head names.
        """
        index = self.state.current if index is None else index
        if index is None or not 0 <= index < len(self.state.cases):
            raise InputError("no case is shown: segment a volume or open a case first")
        case = self.state.cases[index]
        return self._loaded(case, self._results[case.segmentation_id]).prediction

    # -- settings --------------------------------------------------------------------------------------

    @action
    def set_kept_heads(self, first: int, last: int) -> bool:
        """Kept heads, 1-based inclusive; recombines the shown case when it belongs to the loaded model."""
        first, last = int(round(first)), int(round(last))
        if self.state.correcting and (first, last) != self.state.kept_heads:
            raise InputError(EDITING_REFUSAL)
        count = self.state.model.head_count if self.state.model is not None else None
        if first < 1 or last < first or (count is not None and last > count):
            raise InputError(
                f"kept heads {first}-{last}: choose 1 <= first <= last <= {count or 'head count'}"
            )
        self.state.kept_heads = (first, last)
        return self._apply_to_shown(two_parts=True, head_range=scene_cases.head_range((first, last)))

    @action
    def set_threshold(self, threshold: float) -> bool:
        threshold = float(threshold)
        if not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0:
            raise InputError(f"AULA threshold {threshold}: choose a value between 0 and 1")
        self.state.threshold = threshold
        return self._apply_to_shown(threshold=threshold)

    def _apply_to_shown(self, two_parts: bool = False, **settings) -> bool:
        case = self.state.current_case
        if case is None:
            self._changed()
            return False
        if not self._settings_apply_to(case):
            self._changed(
                f"The shown result was made with {case.model_name}: segment it again to use the "
                "loaded model's settings."
            )
            return False
        if _already_shown(case, **settings):
            # Nothing to recombine: a recombination would rewrite the voxels, and over a reviewer's edit
            # it would move the case to a new node (a slider echoing the value it shows must not).
            self._changed()
            return True
        self._recombine(case, self._results[case.segmentation_id], two_parts=two_parts, **settings)
        return True

    @action
    def set_heatmap(self, kind: str | None = None, opacity: float | None = None) -> None:
        """Which voxel uncertainty is overlaid, and how opaque; the shown case gets a missing map computed."""
        if kind is not None and kind not in HEATMAP_KINDS:
            raise InputError(f"heatmap {kind!r}: choose one of {', '.join(HEATMAP_KINDS)}")
        if opacity is not None:
            self.state.heatmap_opacity = min(max(float(opacity), 0.0), 1.0)
            set_heatmap_opacity(self.context, self.state.heatmap_opacity)
        if kind is not None and kind != self.state.heatmap_kind:
            self.state.heatmap_kind = kind
            case = self.state.current_case
            if case is not None:
                result = self._results[case.segmentation_id]
                self._use_heatmap_kind(case, result)
                self._show(case, result)
                return
        self._changed()

    def _use_heatmap_kind(self, case, result) -> None:
        """The review's heatmap kind on this case (one review-wide choice, as a reviewer expects when
        stepping through cases); a missing map is computed from the bundle, the segmentation untouched."""
        kind = self.state.heatmap_kind
        if result.shown_heatmap == kind and kind in result.heatmap_ids:
            return
        if kind not in result.heatmap_ids:
            result = self._loaded(case, result)
        heads = scene_cases.head_range(case.kept_heads) if case.kept_heads else None
        add_heatmap(self.context, result, self._reference(result), kind, heads)

    # -- navigation ------------------------------------------------------------------------------------

    @action
    def open_case(self, index: int) -> bool:
        if not 0 <= index < len(self.state.cases):
            raise InputError(f"case {index + 1}: there are {len(self.state.cases)} case(s)")
        case = self.state.cases[index]
        result = self._results[case.segmentation_id]
        self.state.current = index
        segmentation = self.context.node(case.segmentation_id)
        if segmentation is not None and is_user_edited(segmentation) and not case.reviewer_decision:
            scene_cases.write_review(segmentation, "corrected")
            case.reviewer_decision, case.decision_source = (
                "corrected",
                scene_cases.SOURCE_BY_REVIEW["corrected"],
            )
        if self._settings_apply_to(case) and case.kept_heads is not None:
            self.state.kept_heads, self.state.threshold = case.kept_heads, case.threshold
        try:
            self._use_heatmap_kind(case, result)
        except InputError as error:  # e.g. its bundle is gone: the case still opens, with the map it has
            self.state.status = f"{case.name}: {HEATMAP_LABELS[self.state.heatmap_kind]} not shown ({error})"
        self._show(case, result)
        return True

    def next_case(self):
        return self._step_case(+1)

    def previous_case(self):
        return self._step_case(-1)

    def _step_case(self, step: int):
        if not self.state.cases:
            self._report_error("no cases yet: segment a volume or a worklist first", from_action=True)
            return None
        current = self.state.current if self.state.current is not None else -step
        return self.open_case((current + step) % len(self.state.cases))

    @action
    def next_region(self):
        return self._step_region(+1)

    @action
    def previous_region(self):
        return self._step_region(-1)

    def _step_region(self, step: int):
        case, result = self._current()
        if not result.regions and result.region_cursor == -1:
            agreement_id = result.heatmap_ids.get("agreement")
            if agreement_id:  # a reopened scene: find the regions from the stored map (1 - agreement)
                shown = image_from_volume(self.context.node(agreement_id))
                result.regions = find_uncertain_regions(1.0 - shown)
        if not result.regions:
            self._changed("No uncertain region.")
            return None
        result.region_cursor = (result.region_cursor + step) % len(result.regions)
        region = result.regions[result.region_cursor]
        jump_to_region(self.context, region)
        self.state.region_count, self.state.region_index = len(result.regions), result.region_cursor
        self._changed(
            f"Region {region.rank}/{len(result.regions)}: {region.volume_mm3:.0f} mm³, "
            f"mean disagreement {region.mean_disagreement:.2f}"
        )
        return region

    # -- decisions -------------------------------------------------------------------------------------

    def _decide(self, decision: str) -> bool:
        case, result = self._current()
        scene_cases.write_review(self.context.node(result.segmentation_id), decision)
        case.reviewer_decision, case.decision_source = decision, scene_cases.SOURCE_BY_REVIEW[decision]
        self._changed(f"{case.name}: {case.decision_source}")
        return True

    @action
    def accept(self) -> bool:
        return self._decide("accepted")

    @action
    def flag(self) -> bool:
        return self._decide("flagged")

    @action
    def mark_corrected(self) -> bool:
        return self._decide("corrected")

    @action
    def hand_off_for_correction(self):
        """(segmentation node, source volume node) of the shown case, for a segment editor."""
        _, result = self._current()
        return self.context.node(result.segmentation_id), self.context.node(result.input_id)

    @action
    def begin_correction(self):
        """Hand the shown case to a segment editor and lock its kept heads until the correction ends.

        Other heads mean other voxels: recombined over a correction being painted, they would go into a
        new node and leave the correction behind, hidden.
        """
        nodes = self.hand_off_for_correction()
        if nodes:
            self.state.correcting = True
            self._changed()
        return nodes

    def end_correction(self) -> None:
        """The editor is closed (saved or left): the kept heads can change again."""
        if self.state.correcting:
            self.state.correcting = False
            self._changed()

    @action
    def save_correction(self, segmentation_node, input_node, folder) -> str:
        """Write the edited segmentation as ``<case>_corrected[_N].nii.gz`` in ``folder`` (never over the
        model's output or an earlier correction), end the correction and mark the case corrected."""
        case, _ = self._current()
        try:
            path = write_correction(segmentation_node, input_node, folder, case.name)
        except (OSError, ValueError) as error:
            raise InputError(f"{case.name}: correction not saved ({first_line(error, 200)})") from error
        self.state.correcting = False
        self._decide("corrected")
        return str(path)

    # -- scene -----------------------------------------------------------------------------------------

    @action
    def save(self, folder) -> str:
        """Write the scene (with its data files) and every case's results bundle into ``folder``.

        The bundles are referred to relative to the scene, so the folder can be moved as a whole.
        """
        folder = Path(folder)
        copies = []
        for case in self.state.cases:
            segmentation = self.context.node(case.segmentation_id)
            try:
                source = scene_cases.resolve_bundle(self.context, segmentation)
            except InputError as error:
                self.state.status = str(error)
                continue
            relative = f"{BUNDLE_SUBFOLDER}/{source.name}"
            copies.append((source, folder / relative))
            segmentation.SetAttribute(scene_cases.BUNDLE_ATTRIBUTE, relative)
            case.bundle_path = relative
        # Bundles are copied after the scene is written: writing a scene folder empties it first.
        copies = [
            (source.read_bytes() if source.is_relative_to(folder) else source, target)
            for source, target in copies
        ]
        folder.mkdir(parents=True, exist_ok=True)
        if not self.context.app_logic.SaveSceneToSlicerDataBundleDirectory(str(folder), None):
            raise InputError(f"{folder}: the scene could not be saved there")
        (folder / BUNDLE_SUBFOLDER).mkdir(parents=True, exist_ok=True)
        for source, target in copies:
            if isinstance(source, bytes):
                target.write_bytes(source)
            else:
                shutil.copy2(source, target)
        scene_file = next(folder.glob("*.mrml"))
        self._changed(f"Saved to {scene_file}")
        return str(scene_file)

    @action
    def restore_from_scene(self) -> int:
        """Take up the cases a (reopened) scene holds; their bundles are read when they are recombined."""
        restored = scene_cases.restore_results(self.context)
        for case, result in restored:
            if case.segmentation_id not in self._results:
                self._results[case.segmentation_id] = result
                self._add_case(case)
        if restored and self.state.current is None:
            self.open_case(0)
        self._changed(f"{len(restored)} case(s) found in the scene." if restored else None)
        return len(restored)


def _already_shown(case, head_range=None, threshold=None) -> bool:
    """The shown case already holds these settings (its scene attributes say so): nothing to redo."""
    if head_range is None and threshold is None:
        return False
    if head_range is not None and (
        case.kept_heads is None or tuple(scene_cases.head_range(case.kept_heads)) != tuple(head_range)
    ):
        return False
    return threshold is None or (case.threshold is not None and abs(case.threshold - threshold) <= 1e-9)

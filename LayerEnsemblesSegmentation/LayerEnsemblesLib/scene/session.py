"""A review session on the calling thread: scripts, tests and the screenshot use it; GUIs use the controller.

It segments in this process (``process``), keeps the results with their in-memory head outputs for
recombination, and gives the review controller its input snapshots (``case_from_volume``,
``cases_from_folder``). The GUIs run inference in a child process through
``LayerEnsemblesLib.review.ReviewController`` instead: a thread inside Slicer would only advance while the
main thread runs Python, and a torch crash would take the application with it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from ..errors import InputError
from .bootstrap import SceneContext
from .geometry import roi_corners_ras
from .heatmaps import DEFAULT_OPACITY, set_heatmap_opacity
from .regions import UncertainRegion
from .results import CaseResult, apply_prediction, next_region, recombine_result, show_result
from .runtime import PredictorCache, predict_options
from .worklist import (
    Batch,
    CaseInput,
    Worklist,
    case_input_from_volume,
    case_inputs_from_folder,
    load_case_image,
)


@dataclass
class FinishedCase:
    case: CaseInput
    prediction: Any
    reference: sitk.Image
    crop_index: tuple[int, int, int] | None


class ReviewSession:
    """Results of this session by segmentation node ID, the current one, and the worklist."""

    def __init__(self, context: SceneContext):
        self.context = context
        self.predictors = PredictorCache()
        self.results: dict[str, CaseResult] = {}
        self.current: CaseResult | None = None
        self.worklist: Worklist | None = None
        self._references: dict[str, Any] = {}  # segmentation ID -> input image (geometry for recombination)
        self._run_metadata = None
        self._run_heatmap = "agreement"

    def forget(self) -> None:
        """Drop every result (the scene was closed)."""
        self.results, self._references, self.current, self.worklist = {}, {}, None, None

    # -- inputs (main thread) --------------------------------------------------------------------------

    def case_from_volume(self, volume_node, roi_node=None) -> CaseInput:
        if volume_node is None:
            raise InputError("input volume: select the volume to segment")
        corners = roi_corners_ras(roi_node) if roi_node is not None else None
        return case_input_from_volume(volume_node, corners)

    def cases_from_folder(self, folder, roi_node=None) -> list[CaseInput]:
        folder = str(folder or "")
        if folder in ("", ".") or not os.path.isdir(folder):
            raise InputError(f"{folder or 'folder'}: choose an existing folder of image files")
        corners = roi_corners_ras(roi_node) if roi_node is not None else None
        cases = case_inputs_from_folder(folder, corners)
        if not cases:
            raise InputError(f"{folder}: no image files (.nii.gz, .nii, .nrrd, .mha) in this folder")
        return cases

    # -- running ---------------------------------------------------------------------------------------

    def _prepare(self, model_path: str | Path, device: str, head_range, threshold, heatmap_kind: str):
        predictor = self.predictors.get(model_path, device)
        self._run_metadata, self._run_heatmap = predictor.metadata, heatmap_kind
        return predictor, predict_options(predictor.metadata, head_range, threshold, heatmap_kind)

    def new_batch(self) -> Batch:
        if self.worklist is None or self.context.node(self.worklist.table_id) is None:
            self.worklist = Worklist(self.context)
        return Batch(self.context, self.worklist)

    def commit(self, finished: FinishedCase, batch: Batch | None = None,
               opacity: float | None = DEFAULT_OPACITY) -> CaseResult:
        """Write a finished case into the scene (main thread) and make it the current result."""
        metadata = self._run_metadata
        if batch is not None:
            result = batch.commit(finished.case, finished.prediction, metadata, finished.reference,
                                  finished.crop_index)
        else:
            input_node = self.context.node(finished.case.input_id)
            if input_node is None:
                raise InputError(f"{finished.case.name}: the input volume was removed from the scene during "
                                 "the run")
            result = apply_prediction(self.context, input_node, finished.prediction, metadata,
                                      finished.reference, finished.crop_index, show=False)
        result.shown_heatmap = self._run_heatmap if self._run_heatmap in result.heatmap_ids else "agreement"
        self.results[result.segmentation_id] = result
        self._references[result.segmentation_id] = finished.reference
        self.current = result
        show_result(self.context, result, opacity)
        return result

    def process(self, volume_node, model_path: str | Path, roi_node=None, device: str = "auto",
                head_range=None, threshold: float | None = None, heatmap_kind: str = "agreement",
                progress: Callable[[float, str], None] | None = None,
                cancel: Callable[[], bool] | None = None) -> CaseResult:
        """Segment one volume on the calling thread (scripts, tests); a cancel writes nothing."""
        case = self.case_from_volume(volume_node, roi_node)
        predictor, options = self._prepare(model_path, device, head_range, threshold, heatmap_kind)
        image, reference, crop_index = load_case_image(case)
        prediction = predictor.predict(image, progress=progress, cancel=cancel, source=case.name, **options)
        return self.commit(FinishedCase(case, prediction, reference, crop_index))

    # -- review ----------------------------------------------------------------------------------------

    def recombine(self, result: CaseResult, head_range=None, threshold: float | None = None,
                  heatmap_kind: str | None = None, opacity: float | None = None) -> CaseResult:
        """New kept heads, threshold or heatmap for a result, in place (no new forward pass)."""
        old_id = result.segmentation_id
        reference = self._references[old_id]
        recombine_result(self.context, result, reference, head_range=head_range, threshold=threshold,
                         heatmap_kind=heatmap_kind)
        if result.segmentation_id != old_id:  # the old one was edited by the user and is kept as it is
            self.results[result.segmentation_id] = result
            self._references[result.segmentation_id] = reference
        show_result(self.context, result, opacity)
        if self.worklist is not None and result in self.worklist.cases:
            self.worklist.refresh()
        return result

    def set_heatmap_opacity(self, opacity: float) -> None:
        set_heatmap_opacity(self.context, opacity)

    def next_region(self) -> UncertainRegion | None:
        return next_region(self.context, self.current) if self.current is not None else None

    def show_worklist_row(self, row: int, opacity: float | None = DEFAULT_OPACITY) -> CaseResult | None:
        """Show a worklist row's case; returns its result when this session still holds it."""
        if self.worklist is None:
            return None
        segmentation_id = self.worklist.show_row(row, opacity)
        if segmentation_id in self.results:
            self.current = self.results[segmentation_id]
        return self.results.get(segmentation_id)

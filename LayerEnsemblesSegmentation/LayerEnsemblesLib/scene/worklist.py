"""A worklist for many cases: segment each one, then review them from least to most confident.

The table node lists one row per case ranked by normalised AULA, lowest (most doubtful) first, with the
decision; selecting a row shows that case. The table holds the node IDs, so rows still open their case
after the scene is saved and reloaded, even though recombination then needs a new run.

A batch is split by thread: ``CaseInput`` snapshots are taken on the main thread (reading MRML), images
are read and segmented anywhere (``load_case_image`` and the predictor touch no MRML), and each finished
prediction is committed on the main thread. A cancel at any point rolls back everything the batch added,
so the scene is exactly as it was before the batch started, as for a single case.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import SimpleITK as sitk
import vtk

from ..errors import Cancelled
from ..fileio import read_image
from .bootstrap import SceneContext
from .geometry import add_volume_from_image, crop_to_box, image_from_volume
from .heatmaps import DEFAULT_OPACITY, show_in_slice_views
from .results import HEATMAP_ROLE_PREFIX, CaseResult, apply_prediction, remove_nodes
from .segmentation import ROLE_ATTRIBUTE

WORKLIST_NAME = "LayerEnsembles worklist"
COLUMNS = ("rank", "case", "AULA (normalised)", "AULA", "estimated Dice", "decision", "threshold",
           "input ID", "segmentation ID")
NUMERIC_COLUMNS = {"rank", "AULA (normalised)", "AULA", "threshold"}
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def _estimate_cell(prediction: Any) -> str:
    """"0.84 (0.78–0.88)" where the model's quality map gives one, else "—" (no calibration for it)."""
    estimate = getattr(prediction, "estimated_dice", None)
    return estimate.text().removeprefix("estimated Dice ") if estimate is not None else "—"


@dataclass
class CaseInput:
    """One case to segment: a volume already in the scene (``input_id``) or a file (``path``)."""

    name: str
    input_id: str | None = None
    path: str | None = None
    image: sitk.Image | None = None
    roi_corners: list | None = None


def case_input_from_volume(volume_node, roi_corners=None) -> CaseInput:
    """Snapshot a volume node's voxels and geometry (main thread)."""
    return CaseInput(volume_node.GetName(), volume_node.GetID(), None, image_from_volume(volume_node),
                     roi_corners)


def case_inputs_from_folder(folder: str | Path, roi_corners=None) -> list[CaseInput]:
    """Every image file directly in ``folder``, sorted by name (nothing is read yet)."""
    files = sorted(path for path in Path(folder).iterdir()
                   if path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES))
    return [CaseInput(_case_name(p), None, str(p), None, roi_corners) for p in files]


def load_case_image(case: CaseInput) -> tuple[sitk.Image, sitk.Image, tuple[int, int, int] | None]:
    """(image to segment, full reference image, crop index); reads the file if needed. Touches no MRML."""
    reference = case.image if case.image is not None else read_image(case.path)
    if case.roi_corners is None:
        return reference, reference, None
    cropped, index = crop_to_box(reference, case.roi_corners, case.name)
    return cropped, reference, index


class Worklist:
    """The cases of one review session, and their table node ranked by AULA (lowest first)."""

    def __init__(self, context: SceneContext, table_node=None, name: str = WORKLIST_NAME):
        self.context = context
        self.cases: list[CaseResult] = []
        self.table_id = table_node.GetID() if table_node is not None else None
        self._name = name

    @property
    def table_node(self):
        node = self.context.node(self.table_id)
        if node is None:
            node = self.context.scene.AddNewNodeByClass("vtkMRMLTableNode",
                                                        self.context.scene.GenerateUniqueName(self._name))
            node.SetAttribute(ROLE_ATTRIBUTE, "worklist")
            self.table_id = node.GetID()
        return node

    def ranked(self) -> list[CaseResult]:
        return sorted(self.cases, key=lambda case: (case.prediction.score, case.input_id))

    def add(self, result: CaseResult) -> None:
        self.cases = [case for case in self.cases if case.input_id != result.input_id] + [result]
        self.refresh()

    def refresh(self) -> None:
        """Rewrite the table from the cases' current predictions (after a recombination, too)."""
        table = vtk.vtkTable()
        columns = {}
        for name in COLUMNS:
            column = vtk.vtkDoubleArray() if name in NUMERIC_COLUMNS else vtk.vtkStringArray()
            column.SetName(name)
            columns[name] = column
            table.AddColumn(column)
        for rank, case in enumerate(self.ranked(), start=1):
            input_node = self.context.node(case.input_id)
            values = {
                "rank": rank,
                "case": input_node.GetName() if input_node is not None else case.input_id,
                "AULA (normalised)": case.prediction.score,
                "AULA": case.prediction.aula.raw.get("union", float("nan")),
                "estimated Dice": _estimate_cell(case.prediction),
                "decision": case.prediction.decision,
                "threshold": case.prediction.threshold,
                "input ID": case.input_id,
                "segmentation ID": case.segmentation_id,
            }
            for name in COLUMNS:
                value = values[name]
                columns[name].InsertNextValue(float(value) if name in NUMERIC_COLUMNS else str(value))
        node = self.table_node
        node.SetAndObserveTable(table)
        node.SetUseColumnTitleAsColumnHeader(True)
        node.SetLocked(True)

    def case_at_row(self, row: int) -> CaseResult | None:
        ranked = self.ranked()
        return ranked[row] if 0 <= row < len(ranked) else None

    def show_row(self, row: int, opacity: float | None = DEFAULT_OPACITY) -> str | None:
        """Show the case of a table row; returns its segmentation node ID."""
        return show_table_row(self.context, self.table_node, row, opacity)

    def remove_cases(self, results: Iterable[CaseResult]) -> None:
        doomed = {case.segmentation_id for case in results}
        self.cases = [case for case in self.cases if case.segmentation_id not in doomed]


def show_table_row(context: SceneContext, table_node, row: int,
                   opacity: float | None = DEFAULT_OPACITY) -> str | None:
    """Show the input, heatmap and segmentation named on ``row`` of a worklist table (also after a reload)."""
    table = table_node.GetTable()
    if table is None or not 0 <= row < table.GetNumberOfRows():
        return None
    input_node = context.node(table.GetValueByName(row, "input ID").ToString())
    segmentation = context.node(table.GetValueByName(row, "segmentation ID").ToString())
    if input_node is None or segmentation is None:
        return None
    heatmap = segmentation.GetNodeReference(HEATMAP_ROLE_PREFIX + "agreement")
    show_in_slice_views(context, input_node, heatmap, opacity)
    for node in context.nodes_by_class("vtkMRMLSegmentationNode"):
        if node.GetAttribute(ROLE_ATTRIBUTE) == "segmentation" and node.GetDisplayNode() is not None:
            node.GetDisplayNode().SetVisibility(node.GetID() == segmentation.GetID())
    return segmentation.GetID()


class Batch:
    """Commits finished cases into the scene and a worklist, and can take them all back out."""

    def __init__(self, context: SceneContext, worklist: Worklist | None = None):
        self.context = context
        self.worklist = worklist or Worklist(context)
        self._table_existed = context.node(self.worklist.table_id) is not None
        self.results: list[CaseResult] = []
        self._added_ids: list[str] = []  # every node the commits added, in order (the rollback list)

    def commit(self, case: CaseInput, prediction: Any, metadata: Any, reference: sitk.Image,
               crop_index=None) -> CaseResult:
        """Write one finished case (main thread): its volume if it came from a file, then its results.

        The nodes it adds are recorded by comparing the scene before and after: the commit runs on the
        main thread in one go, so nothing else can add nodes in between.
        """
        before = set(_node_ids(self.context))
        input_node = self.context.node(case.input_id)
        if input_node is None:
            input_node = add_volume_from_image(self.context.scene, reference,
                                               self.context.scene.GenerateUniqueName(case.name))
            case.input_id = input_node.GetID()
        try:
            result = apply_prediction(self.context, input_node, prediction, metadata, reference, crop_index,
                                      show=False)
            self.results.append(result)
            self.worklist.add(result)
        finally:
            self._added_ids += [node_id for node_id in _node_ids(self.context) if node_id not in before]
        return result

    def finish(self) -> Worklist:
        if self.worklist.cases:
            self.worklist.show_row(0)
        return self.worklist

    def rollback(self) -> None:
        """Remove every node this batch added; the worklist forgets its cases."""
        self.worklist.remove_cases(self.results)
        remove_nodes(self.context, self._added_ids)
        if not self._table_existed:
            self.worklist.table_id = None
        elif self.context.node(self.worklist.table_id) is not None:
            self.worklist.refresh()
        self.results, self._added_ids = [], []


def segment_cases(context: SceneContext, predictor: Any, cases: list[CaseInput],
                  worklist: Worklist | None = None,
                  predict_options: dict | None = None, progress: Callable[[float, str], None] | None = None,
                  cancel: Callable[[], bool] | None = None) -> Worklist:
    """Segment every case on the calling thread and rank them in a worklist; a cancel rolls all back."""
    batch = Batch(context, worklist)
    total = max(len(cases), 1)
    try:
        for position, case in enumerate(cases):
            def case_progress(fraction: float, message: str, _position=position, _name=case.name) -> None:
                if progress is not None:
                    progress((_position + fraction) / total, f"{_name} ({_position + 1}/{total}): {message}")

            image, reference, crop_index = load_case_image(case)
            prediction = predictor.predict(image, progress=case_progress, cancel=cancel, source=case.name,
                                           **(predict_options or {}))
            if cancel is not None and cancel():
                raise Cancelled("cancelled by the user")
            batch.commit(case, prediction, predictor.metadata, reference, crop_index)
    except Cancelled:
        batch.rollback()
        raise
    return batch.finish()


def _node_ids(context: SceneContext) -> list[str]:
    return [context.scene.GetNthNode(i).GetID() for i in range(context.scene.GetNumberOfNodes())]


def _case_name(path) -> str:
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem

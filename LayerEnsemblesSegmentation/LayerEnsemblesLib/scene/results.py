"""One case's results in the scene, created from a prediction and updated in place on recombination.

``apply_prediction`` writes a finished prediction into MRML: it must be called on the thread that owns
the scene (Slicer's main thread), after the forward pass has returned. Nothing is written before that, so
a cancelled or failed run leaves the scene as it was.

``recombine_result`` re-reads the stored per-head outputs through ``Prediction.recombine`` (no new
forward pass) and rewrites the same nodes, keeping their IDs so views, plots and references follow. A
segmentation a user has edited since it was written is never overwritten: it is kept (and marked), and
the recombined result goes to a new segmentation node beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import SimpleITK as sitk
import slicer

from .bootstrap import SceneContext
from .decision import PREFIX as DECISION_PREFIX
from .decision import store_decision
from .geometry import same_geometry, uncrop
from .heatmaps import DEFAULT_OPACITY, DEFAULT_VISIBLE_FROM, show_in_slice_views, write_heatmap
from .plots import write_agreement_plot
from .regions import UncertainRegion, jump_to_region, regions_from_disagreement
from .segmentation import create_segmentation_node, is_user_edited, write_segments
from .surfaces import drop_segment_surfaces, uncertain_region_id

HEATMAP_ROLE_PREFIX = "LayerEnsembles.heatmap."
TABLE_ROLE = "LayerEnsembles.agreementTable"
CHART_ROLE = "LayerEnsembles.agreementChart"
EDITED_ATTRIBUTE = "LayerEnsembles.UserEdited"


@dataclass
class CaseResult:
    """What the scene holds for one input volume, plus the in-memory prediction recombination needs."""

    input_id: str
    segmentation_id: str
    heatmap_ids: dict[str, str]
    table_id: str
    chart_id: str
    prediction: Any
    metadata: Any
    crop_index: tuple[int, int, int] | None = None
    regions: list[UncertainRegion] = field(default_factory=list)
    region_cursor: int = -1
    shown_heatmap: str = "agreement"
    # Set while the regions of a redraw shown in two parts are still to be found: the grid they are on.
    regions_grid: sitk.Image | None = None

    @property
    def model_name(self) -> str:
        return self.metadata.name

    def node_ids(self) -> set[str]:
        return {self.segmentation_id, self.table_id, self.chart_id, *self.heatmap_ids.values()}


def _full_size(image: sitk.Image, reference: sitk.Image, crop_index, fill: float) -> sitk.Image:
    full = uncrop(image, reference, crop_index, fill)
    if not same_geometry(full, reference):
        raise ValueError("the prediction's geometry differs from the input volume's")
    return full


def _segmentation_name(context: SceneContext, input_node) -> str:
    return context.scene.GenerateUniqueName(f"{input_node.GetName()} LayerEnsembles")


def apply_prediction(context: SceneContext, input_node, prediction: Any, metadata: Any, reference: sitk.Image,
                     crop_index=None, heatmap_kind: str = "agreement", opacity: float = DEFAULT_OPACITY,
                     show: bool = True) -> CaseResult:
    """Write a prediction for ``input_node`` into the scene (on the main thread) and return its handle.

    ``reference`` is the input as a SimpleITK image (its geometry); ``crop_index`` is where the ROI crop
    the prediction was computed on starts in it, or None for the whole volume.
    """
    segmentation = create_segmentation_node(context, input_node, metadata.classes,
                                            _segmentation_name(context, input_node))
    result = CaseResult(input_node.GetID(), segmentation.GetID(), {}, "", "", prediction, metadata,
                        tuple(crop_index) if crop_index is not None else None, shown_heatmap=heatmap_kind)
    _write_all(context, result, reference, segmentation)
    if show:
        show_result(context, result, opacity=opacity)
    return result


def _write_all(context: SceneContext, result: CaseResult, reference: sitk.Image, segmentation,
               regions_now: bool = True) -> None:
    prediction, metadata = result.prediction, result.metadata
    input_node = context.node(result.input_id)
    labels = _full_size(prediction.segmentation, reference, result.crop_index, 0)
    write_segments(segmentation, labels, metadata.classes)
    store_decision(segmentation, prediction, metadata.name, metadata.classes)

    disagreement = None
    for kind, image in prediction.maps.items():
        full = _full_size(image, reference, result.crop_index, 1.0 if kind == "agreement" else 0.0)
        node = write_heatmap(context, input_node, kind, full, metadata.num_classes,
                             node=context.node(result.heatmap_ids.get(kind)))
        result.heatmap_ids[kind] = node.GetID()
        segmentation.SetNodeReferenceID(HEATMAP_ROLE_PREFIX + kind, node.GetID())
        if kind == "agreement":  # the map as shown is 1 - agreement: the regions are read from it in place
            disagreement = (slicer.util.arrayFromVolume(node), full)
    table, chart = write_agreement_plot(context, input_node, prediction, context.node(result.table_id),
                                        context.node(result.chart_id))
    result.table_id, result.chart_id = table.GetID(), chart.GetID()
    segmentation.SetNodeReferenceID(TABLE_ROLE, table.GetID())
    segmentation.SetNodeReferenceID(CHART_ROLE, chart.GetID())
    result.regions_grid = None
    if disagreement is not None:
        if regions_now:
            result.regions = regions_from_disagreement(*disagreement, DEFAULT_VISIBLE_FROM)
        else:  # found by find_pending_regions, from the heatmap node, once the slice views are drawn
            result.regions, result.regions_grid = [], _grid_of(disagreement[1])
        result.region_cursor = -1
    _release_input_space(prediction)


def _grid_of(image: sitk.Image) -> sitk.Image:
    """One voxel with ``image``'s spacing, origin and direction: all the regions read of their grid."""
    grid = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    grid.SetSpacing(image.GetSpacing())
    grid.SetOrigin(image.GetOrigin())
    grid.SetDirection(image.GetDirection())
    return grid


def find_pending_regions(context: SceneContext, result: CaseResult) -> bool:
    """The uncertain regions a redraw shown in two parts left for its second part (``recombine_result``
    with ``regions_now=False``), read in place from the agreement heatmap node as the first part would
    have read them; False when none were pending."""
    grid, result.regions_grid = result.regions_grid, None
    node = context.node(result.heatmap_ids.get("agreement"))
    if grid is None or node is None:
        return False
    array = slicer.util.arrayFromVolume(node)
    result.regions = regions_from_disagreement(array, grid, DEFAULT_VISIBLE_FROM)
    result.region_cursor = -1
    return True


def _release_input_space(prediction: Any) -> None:
    """The scene now holds what the prediction's input-grid images showed: the prediction keeps only its
    head outputs (the images are derived again if asked for), not a second full-size copy per case."""
    release = getattr(prediction, "release_input_space", None)
    if release is not None:
        release()


def _map_names(prediction: Any) -> set[str]:
    names = getattr(prediction, "map_names", None)
    return set(names if names is not None else prediction.maps)


def show_result(context: SceneContext, result: CaseResult, opacity: float | None = DEFAULT_OPACITY) -> None:
    """Input as background, the chosen heatmap as foreground, this case's segmentation visible."""
    heatmap = context.node(result.heatmap_ids.get(result.shown_heatmap)) or \
        context.node(result.heatmap_ids.get("agreement"))
    show_in_slice_views(context, context.node(result.input_id), heatmap, opacity)
    for node in context.nodes_by_class("vtkMRMLSegmentationNode"):
        display = node.GetDisplayNode()
        if display is not None and node.GetAttribute("LayerEnsembles.Role") == "segmentation":
            display.SetVisibility(node.GetID() == result.segmentation_id)


def recombine_result(context: SceneContext, result: CaseResult, reference: sitk.Image,
                     head_range: tuple[int, int] | None = None, threshold: float | None = None,
                     heatmap_kind: str | None = None, regions_now: bool = True) -> CaseResult:
    """Re-derive everything from the stored head outputs with new kept heads or threshold, in place.

    ``heatmap_kind`` adds (and shows) a map the first run did not compute. Returns the same CaseResult,
    whose ``segmentation_id`` changes only when new voxels would have to be written over a segmentation
    the user edited (other kept heads): the edit is kept and the new result goes into a new node. A new
    threshold alone never does that, edited or not: it changes the decision, not one voxel.
    ``regions_now=False`` leaves the uncertain regions to ``find_pending_regions`` (a GUI draws the
    slice views first), and the segments' 3D surfaces to ``show_in_3d``.
    """
    kinds = set(result.prediction.maps)
    if heatmap_kind is not None:
        kinds.add(heatmap_kind)
        result.shown_heatmap = heatmap_kind
    # None keeps the previous value: a new threshold keeps the heads chosen before, and vice versa.
    prediction = result.prediction.recombine(head_range=head_range, threshold=threshold,
                                             maps=tuple(sorted(kinds)))
    segmentation = context.node(result.segmentation_id)
    input_node = context.node(result.input_id)
    if _only_the_decision_changed(result, prediction, segmentation):
        # A new threshold alone: the voxels in the scene stay right, only the decision and the plot's title
        # change; rewriting segments and maps would cost seconds on a large volume.
        result.prediction = prediction
        store_decision(segmentation, prediction, result.metadata.name, result.metadata.classes)
        write_agreement_plot(context, input_node, prediction, context.node(result.table_id),
                             context.node(result.chart_id))
        return result
    if segmentation is None or is_user_edited(segmentation):
        if segmentation is not None:
            segmentation.SetAttribute(EDITED_ATTRIBUTE, "true")
        segmentation = create_segmentation_node(context, input_node, result.metadata.classes,
                                                _segmentation_name(context, input_node))
        result.segmentation_id = segmentation.GetID()
    result.prediction = prediction
    if not regions_now:
        drop_segment_surfaces(segmentation)  # rebuilt once, by show_in_3d, after the slice views
    _write_all(context, result, reference, segmentation, regions_now)
    return result


def add_heatmap(context: SceneContext, result: CaseResult, reference: sitk.Image, kind: str,
                head_range: tuple[int, int] | None = None) -> CaseResult:
    """Compute one more heatmap kind from the stored head outputs and show it; nothing else is rewritten.

    Another heatmap kind is a display choice: the segmentation (which the reviewer may have corrected),
    the decision and the plot stay as they are, so a corrected case is never recombined over.
    ``head_range`` is the shown result's (a prediction read back from a bundle may hold other heads).
    """
    if kind in result.heatmap_ids and context.node(result.heatmap_ids[kind]) is not None:
        result.shown_heatmap = kind
        return result
    prediction = result.prediction.recombine(head_range=head_range,
                                             maps=tuple(sorted({*result.prediction.maps, kind})))
    input_node = context.node(result.input_id)
    fill = 1.0 if kind == "agreement" else 0.0
    full = _full_size(prediction.maps[kind], reference, result.crop_index, fill)
    node = write_heatmap(context, input_node, kind, full, result.metadata.num_classes,
                         node=context.node(result.heatmap_ids.get(kind)))
    result.heatmap_ids[kind] = node.GetID()
    segmentation = context.node(result.segmentation_id)
    if segmentation is not None:
        segmentation.SetNodeReferenceID(HEATMAP_ROLE_PREFIX + kind, node.GetID())
    result.prediction, result.shown_heatmap = prediction, kind
    _release_input_space(prediction)
    return result


def _only_the_decision_changed(result: CaseResult, prediction: Any, segmentation) -> bool:
    """The engine returned the very same volumes, and they are the ones the scene shows (its stored kept
    heads match; after a reopened scene the in-memory prediction may be another head range's).

    A user-edited segmentation counts too: its voxels are the reviewer's and stay. Moving the case to a
    fresh node with the model's voxels here made a Segment Editor session edit a node the case no longer
    pointed to, so a saved correction silently lost the reviewer's strokes (issue 11)."""
    old = result.prediction
    # The engine re-derives nothing for the same heads and maps (Prediction.recombine): the same volumes.
    if segmentation is None or tuple(prediction.head_range) != tuple(old.head_range):
        return False
    names = _map_names(prediction)
    if names != _map_names(old) or not names <= set(result.heatmap_ids):
        return False
    first, stop = prediction.head_range
    return segmentation.GetAttribute(DECISION_PREFIX + "KeptHeads") == f"{first}:{stop}"


def next_region(context: SceneContext, result: CaseResult) -> UncertainRegion | None:
    """Jump the slice views to the next uncertain region (wrapping round); None when there is none."""
    if not result.regions:
        return None
    result.region_cursor = (result.region_cursor + 1) % len(result.regions)
    region = result.regions[result.region_cursor]
    jump_to_region(context, region)
    return region


def remove_result(context: SceneContext, result: CaseResult) -> None:
    """Remove every node this case created, with their display, storage, legend and plot-series nodes."""
    doomed = []
    surface_id = uncertain_region_id(context.node(result.segmentation_id))
    for node_id in [*result.node_ids(), *([surface_id] if surface_id else [])]:
        node = context.node(node_id)
        if node is None:
            continue
        if node.IsA("vtkMRMLPlotChartNode"):
            doomed += [node.GetNthPlotSeriesNode(i) for i in range(node.GetNumberOfPlotSeriesNodes())]
        if node.IsA("vtkMRMLScalarVolumeNode"):
            doomed.append(context.colors_logic.GetColorLegendDisplayNode(node))
        if node.IsA("vtkMRMLDisplayableNode"):
            doomed += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        if node.IsA("vtkMRMLStorableNode"):
            doomed += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
        doomed.append(node)
    remove_nodes(context, [node.GetID() for node in doomed if node is not None])


def remove_nodes(context: SceneContext, node_ids) -> None:
    """Remove nodes by ID, last added first, skipping those already gone."""
    for node_id in reversed(list(dict.fromkeys(node_ids))):
        node = context.node(node_id)
        if node is not None:
            context.scene.RemoveNode(node)

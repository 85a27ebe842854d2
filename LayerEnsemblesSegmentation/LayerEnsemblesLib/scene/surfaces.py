"""The 3D view of a shown result: the segmentation as closed surfaces, and where the heads disagree.

A volume rendering of the MRI says nothing about the review: the reviewer needs the shape of the
segmentation (its segments as surfaces, in the model's colours) and where it is doubtful. So the shown
case's segmentation gets a closed-surface representation shown in 3D, and the voxels the slice views
colour (the shown heatmap at or above its visibility level) become one red surface in a small
segmentation node of its own ("uncertain region", 3D only, unsmoothed so that a single doubtful voxel
stays visible), rebuilt only when that heatmap or level changed. Where the heads disagree at the
boundary, red patches stand out of the smoothed segment surfaces. Both are opaque: in trame-slicer's
offscreen (llvmpipe) 3D view a translucent surface was not drawn at all, with or without depth peeling.
The 3D camera is framed on the case when another case is shown, and left alone otherwise (a
reviewer's rotation survives a change of heads or threshold).
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .bootstrap import SceneContext
from .heatmaps import DEFAULT_VISIBLE_FROM
from .regions import mask_bounding_box
from .segmentation import INPUT_REFERENCE_ROLE, ROLE_ATTRIBUTE, place_next_to

UNCERTAIN_ROLE = "uncertain-region"
UNCERTAIN_REFERENCE_ROLE = "LayerEnsembles.uncertainRegion"
UNCERTAIN_SEGMENT = "uncertain"
SOURCE_ATTRIBUTE = "LayerEnsembles.UncertainSource"  # what the surface was built from (skip a rebuild)
FRAMED_ATTRIBUTE = "LayerEnsembles.FramedSegmentation"  # on a camera node: the case it was framed on
# The heatmap colour table's dark-red anchor: reads as "doubtful" and differs from the segment colours.
UNCERTAIN_COLOR = (240 / 255, 59 / 255, 32 / 255)
UNCERTAIN_OPACITY = 1.0  # opaque: translucent surfaces were not drawn by the offscreen web 3D view
SURFACE_ROLES = ("segmentation", UNCERTAIN_ROLE)


def show_in_3d(context: SceneContext, result, level: float = DEFAULT_VISIBLE_FROM) -> None:
    """Show ``result`` in the 3D views: its segments as surfaces, its uncertain region in red among them;
    every other case's surfaces hidden. The 2D display is not touched."""
    segmentation = context.node(result.segmentation_id)
    if segmentation is None:
        return
    _show_segment_surfaces(segmentation)
    heatmap = context.node(result.heatmap_ids.get(result.shown_heatmap)) or context.node(
        result.heatmap_ids.get("agreement")
    )
    uncertain = update_uncertain_region(context, segmentation, heatmap, level) if heatmap else None
    shown = {segmentation.GetID(), uncertain.GetID() if uncertain is not None else None}
    for node in context.nodes_by_class("vtkMRMLSegmentationNode"):
        display = node.GetDisplayNode()
        if display is not None and node.GetAttribute(ROLE_ATTRIBUTE) == UNCERTAIN_ROLE:
            display.SetVisibility(node.GetID() in shown)
    frame_3d_views(context, segmentation)


def _show_segment_surfaces(segmentation) -> None:
    """Closed surfaces of the segments (made once; the segmentation keeps them up to date on edits)."""
    closed = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    if not segmentation.GetSegmentation().ContainsRepresentation(closed):
        segmentation.CreateClosedSurfaceRepresentation()
    display = segmentation.GetDisplayNode()
    if display is not None:
        display.SetPreferredDisplayRepresentationName3D(closed)
        display.SetVisibility3D(True)


def drop_segment_surfaces(segmentation) -> None:
    """Remove the segments' closed surfaces before their voxels are rewritten: with the surfaces kept,
    each segment written converts its surface at once, while the slice views still wait for their frame
    (a sixth of a second on a 256 x 256 x 160 volume). ``show_in_3d`` makes them again, the same."""
    display = segmentation.GetDisplayNode()
    if display is not None:  # hidden in 3D meanwhile, so that no 3D view asks for the surfaces again
        display.SetVisibility3D(False)
    closed = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    content = segmentation.GetSegmentation()
    if content.ContainsRepresentation(closed):
        content.RemoveRepresentation(closed)


def uncertain_labelmap(heatmap_node, level: float) -> slicer.vtkOrientedImageData | None:
    """The voxels the slice views colour (the shown, uncertainty-oriented 0-1 heatmap at or above
    ``level``) as a labelmap cropped to where they are: its surface is made from that extent only (the
    whole grid of a 256 x 256 x 160 volume took 0.6 s, mostly on empty voxels)."""
    data = heatmap_node.GetImageData()
    columns, rows, slices = data.GetDimensions()
    values = numpy_support.vtk_to_numpy(data.GetPointData().GetScalars()).reshape(slices, rows, columns)
    mask = values >= level
    matrix = vtk.vtkMatrix4x4()
    heatmap_node.GetIJKToRASMatrix(matrix)  # a volume node's image data has unit spacing, zero origin
    labelmap = slicer.vtkOrientedImageData()
    labelmap.SetImageToWorldMatrix(matrix)
    box = mask_bounding_box(mask)
    if box is None:  # nothing uncertain (or an undefined map, e.g. one kept head): no labelmap
        return None
    (z0, y0, x0), (z1, y1, x1) = box
    labelmap.SetExtent(x0, x1 - 1, y0, y1 - 1, z0, z1 - 1)
    labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    box = mask[z0:z1, y0:y1, x0:x1]
    numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())[:] = box.astype(np.uint8).ravel()
    return labelmap


def update_uncertain_region(context: SceneContext, segmentation, heatmap_node, level: float):
    """The case's uncertain-region node, (re)built from ``heatmap_node`` when that map changed."""
    node = segmentation.GetNodeReference(UNCERTAIN_REFERENCE_ROLE)
    if node is None:
        node = _create_uncertain_node(context, segmentation)
    image_data = heatmap_node.GetImageData()
    source = f"{heatmap_node.GetID()}@{image_data.GetMTime() if image_data else 0}>={level:g}"
    if node.GetAttribute(SOURCE_ATTRIBUTE) == source:
        return node
    labelmap = uncertain_labelmap(heatmap_node, level)
    if labelmap is None:  # an empty segment again: a one-voxel labelmap made VTK's surface filter fail
        content = node.GetSegmentation()
        content.RemoveSegment(UNCERTAIN_SEGMENT)
        content.AddEmptySegment(UNCERTAIN_SEGMENT, "uncertain region", list(UNCERTAIN_COLOR))
        node.CreateClosedSurfaceRepresentation()  # the new segment gets the surface a later map updates
    elif not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        labelmap, node, UNCERTAIN_SEGMENT
    ):
        raise RuntimeError(f"{node.GetName()}: could not write the uncertain region")
    node.SetAttribute(SOURCE_ATTRIBUTE, source)
    return node


def _create_uncertain_node(context: SceneContext, segmentation):
    input_node = segmentation.GetNodeReference(INPUT_REFERENCE_ROLE)
    name = context.scene.GenerateUniqueName(f"{segmentation.GetName()} uncertain region")
    node = context.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetAttribute(ROLE_ATTRIBUTE, UNCERTAIN_ROLE)
    if input_node is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(input_node)
        node.SetNodeReferenceID(INPUT_REFERENCE_ROLE, input_node.GetID())
        place_next_to(context, node, input_node)
    content = node.GetSegmentation()
    content.AddEmptySegment(UNCERTAIN_SEGMENT, "uncertain region", list(UNCERTAIN_COLOR))
    content.SetConversionParameter("Smoothing factor", "0.0")  # smoothing erodes isolated voxels away
    node.CreateClosedSurfaceRepresentation()
    display = node.GetDisplayNode()
    display.SetVisibility2D(False)  # the slice views show the heatmap itself
    display.SetVisibility3D(True)
    display.SetOpacity3D(UNCERTAIN_OPACITY)
    segmentation.SetNodeReferenceID(UNCERTAIN_REFERENCE_ROLE, node.GetID())
    return node


def uncertain_region_id(segmentation) -> str | None:
    """The uncertain-region node of a case's segmentation (removed with the case), or None."""
    return segmentation.GetNodeReferenceID(UNCERTAIN_REFERENCE_ROLE) if segmentation is not None else None


def frame_3d_views(context: SceneContext, segmentation, force: bool = False) -> None:
    """Point every 3D camera at the case from the front (anterior, head up), far enough to see it whole;
    only when the camera was framed on another case (or ``force``)."""
    bounds = [0.0] * 6
    segmentation.GetRASBounds(bounds)
    if bounds[0] > bounds[1]:  # empty segmentation: frame the input volume instead
        input_node = segmentation.GetNodeReference(INPUT_REFERENCE_ROLE)
        if input_node is None:
            return
        input_node.GetRASBounds(bounds)
    low, high = np.array(bounds[0::2]), np.array(bounds[1::2])
    center = (low + high) / 2.0
    distance = 1.8 * max(float(np.linalg.norm(high - low)), 10.0)
    for camera in context.nodes_by_class("vtkMRMLCameraNode"):
        if not force and camera.GetAttribute(FRAMED_ATTRIBUTE) == segmentation.GetID():
            continue
        was_modifying = camera.StartModify()
        camera.SetFocalPoint(*center)
        camera.SetPosition(*(center + np.array([0.0, distance, 0.0])))
        camera.SetViewUp(0.0, 0.0, 1.0)
        camera.SetAttribute(FRAMED_ATTRIBUTE, segmentation.GetID())
        camera.EndModify(was_modifying)
        camera.ResetClippingRange()

"""The 3D view of a shown result on a real slicer-core scene: segment surfaces in the model's colours,
the uncertain region (what the slice views colour) as its own 3D-only red surface, rebuilt only
when the heatmap changed, the camera framed on the case, and everything removed with the case."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from LayerEnsemblesLib.contract import default_classes
from LayerEnsemblesLib.scene import add_volume_from_image, create_scene, image_from_volume, write_heatmap
from LayerEnsemblesLib.scene.results import CaseResult, remove_result
from LayerEnsemblesLib.scene.segmentation import create_segmentation_node, write_segments
from LayerEnsemblesLib.scene.surfaces import (
    SOURCE_ATTRIBUTE,
    UNCERTAIN_ROLE,
    UNCERTAIN_SEGMENT,
    show_in_3d,
    uncertain_region_id,
)
from scene_support import blob_image
from vtk.util import numpy_support

CLOSED = "Closed surface"


def surface_points(node, segment_id: str) -> int:
    import vtk

    polydata = vtk.vtkPolyData()
    node.GetClosedSurfaceRepresentation(segment_id, polydata)
    return polydata.GetNumberOfPoints()


def labelmap_voxels(node, segment_id: str) -> int:
    import slicer

    labelmap = slicer.vtkOrientedImageData()
    node.GetBinaryLabelmapRepresentation(segment_id, labelmap)
    scalars = labelmap.GetPointData().GetScalars()
    return int(np.count_nonzero(numpy_support.vtk_to_numpy(scalars))) if scalars is not None else 0


def a_case(context, seed: int = 0):
    image = blob_image(seed=seed)
    volume = add_volume_from_image(context.scene, image, f"case {seed}")
    classes = default_classes(["background", "anterior", "posterior"])
    segmentation = create_segmentation_node(context, volume, classes, f"seg {seed}")
    labels = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.uint8)
    labels[6:14, 8:16, 8:14] = 1
    labels[6:14, 8:16, 14:20] = 2
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(image)
    write_segments(segmentation, label_image, classes)
    agreement = np.ones(labels.shape, dtype=np.float32)
    agreement[9:11, 10:14, 12:16] = 0.4  # heads disagree at the boundary between the two classes
    agreement[2, 2, 2] = 0.9  # a single dissenting head: below the visibility level
    agreement_image = sitk.GetImageFromArray(agreement)
    agreement_image.CopyInformation(image)
    heatmap = write_heatmap(context, volume, "agreement", agreement_image, 3)
    result = CaseResult(
        volume.GetID(), segmentation.GetID(), {"agreement": heatmap.GetID()}, "", "", None, None
    )
    return result, classes


def test_the_shown_case_is_drawn_as_surfaces_with_its_uncertain_region():
    context = create_scene()
    camera = context.scene.AddNewNodeByClass("vtkMRMLCameraNode")
    first, classes = a_case(context, 0)
    second, _ = a_case(context, 1)
    show_in_3d(context, first)
    segmentation = context.node(first.segmentation_id)
    display = segmentation.GetDisplayNode()
    assert display.GetVisibility3D() and display.GetPreferredDisplayRepresentationName3D() == CLOSED
    for info in classes[1:]:
        assert surface_points(segmentation, f"class_{info.value}") > 0
        color = segmentation.GetSegmentation().GetSegment(f"class_{info.value}").GetColor()
        assert np.allclose(color, np.array(info.color) / 255.0)  # the model's colours
    uncertain = context.node(uncertain_region_id(segmentation))
    assert uncertain.GetAttribute("LayerEnsembles.Role") == UNCERTAIN_ROLE
    assert not uncertain.GetDisplayNode().GetVisibility2D() and uncertain.GetDisplayNode().GetVisibility3D()
    # exactly the voxels the slice views colour: disagreement (1 - agreement) >= 0.2
    shown = sitk.GetArrayFromImage(image_from_volume(context.node(first.heatmap_ids["agreement"])))
    assert labelmap_voxels(uncertain, UNCERTAIN_SEGMENT) == np.count_nonzero(shown >= 0.2) == 2 * 4 * 4
    assert surface_points(uncertain, UNCERTAIN_SEGMENT) > 0
    # the camera looks at the case from the front
    bounds = [0.0] * 6
    segmentation.GetRASBounds(bounds)
    assert camera.GetFocalPoint() == pytest.approx([(bounds[i] + bounds[i + 1]) / 2 for i in (0, 2, 4)])
    assert camera.GetPosition()[1] > bounds[3] and camera.GetViewUp() == pytest.approx([0, 0, 1])

    # Unchanged heatmap: not rebuilt. Another case: its own surfaces shown, the first case's hidden.
    source = uncertain.GetAttribute(SOURCE_ATTRIBUTE)
    mtime = uncertain.GetMTime()
    show_in_3d(context, first)
    assert uncertain.GetMTime() == mtime and uncertain.GetAttribute(SOURCE_ATTRIBUTE) == source
    show_in_3d(context, second)
    other = context.node(uncertain_region_id(context.node(second.segmentation_id)))
    assert other.GetDisplayNode().GetVisibility() and not uncertain.GetDisplayNode().GetVisibility()
    # A recombined heatmap (another kept heads) rebuilds the region.
    calmer = sitk.GetImageFromArray(np.ones(shown.shape, dtype=np.float32))
    calmer.CopyInformation(image_from_volume(context.node(first.input_id)))
    write_heatmap(context, context.node(first.input_id), "agreement", calmer, 3,
                  node=context.node(first.heatmap_ids["agreement"]))  # fmt: skip
    show_in_3d(context, first)
    assert labelmap_voxels(uncertain, UNCERTAIN_SEGMENT) == 0 and uncertain.GetDisplayNode().GetVisibility()

    uncertain_id = uncertain.GetID()
    remove_result(context, first)
    assert context.node(uncertain_id) is None and context.node(other.GetID()) is not None


def test_an_uncertain_region_that_empties_leaves_an_empty_surface():
    """A map with nothing at or above the level (all heads agree, or a single kept head) empties the
    region: the segment stays, with no voxel and no surface, and a later map fills it again."""
    context = create_scene()
    result, _ = a_case(context, 0)
    show_in_3d(context, result)
    segmentation = context.node(result.segmentation_id)
    uncertain = context.node(uncertain_region_id(segmentation))
    assert labelmap_voxels(uncertain, UNCERTAIN_SEGMENT) > 0
    heatmap = context.node(result.heatmap_ids["agreement"])
    values = numpy_support.vtk_to_numpy(heatmap.GetImageData().GetPointData().GetScalars())
    saved = values.copy()
    values[:] = 0.0  # nothing uncertain
    heatmap.GetImageData().Modified()
    show_in_3d(context, result)
    assert uncertain.GetSegmentation().GetSegment(UNCERTAIN_SEGMENT) is not None
    assert labelmap_voxels(uncertain, UNCERTAIN_SEGMENT) == 0
    assert surface_points(uncertain, UNCERTAIN_SEGMENT) == 0
    values[:] = saved
    heatmap.GetImageData().Modified()
    show_in_3d(context, result)
    assert labelmap_voxels(uncertain, UNCERTAIN_SEGMENT) > 0
    assert surface_points(uncertain, UNCERTAIN_SEGMENT) > 0

"""SimpleITK (LPS) <-> MRML (RAS) conversions, ROI crops and the scene bootstrap, on a slicer-core scene."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.scene import (
    add_volume_from_image,
    create_scene,
    crop_to_box,
    grid_from_volume,
    image_from_volume,
    lps_to_ras,
    roi_corners_ras,
    uncrop,
)
from scene_support import OBLIQUE, blob_image, ras_to_ijk


@pytest.fixture
def context():
    return create_scene()


def test_bootstrap_registers_logics_and_slice_views(context):
    for name in ("Colors", "Volumes", "Segmentations", "SubjectHierarchy"):
        assert context.app_logic.GetModuleLogic(name) is not None, name
    assert context.app_logic.GetColorLogic() is context.colors_logic
    composites = context.nodes_by_class("vtkMRMLSliceCompositeNode")
    assert sorted(c.GetLayoutName() for c in composites) == ["Green", "Red", "Yellow"]
    orientations = {n.GetLayoutName(): n.GetOrientation() for n in context.nodes_by_class("vtkMRMLSliceNode")}
    assert orientations == {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
    # A segment can be created only when the Segmentations logic is registered.
    node = context.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert node.GetSegmentation().AddEmptySegment("s", "s") == "s"


def test_volume_round_trip_keeps_voxels_and_geometry(context):
    image = blob_image()
    volume = add_volume_from_image(context.scene, image, "input")
    back = image_from_volume(volume)
    assert back.GetSize() == image.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    # the grid read without the voxels is the very grid of the copy (the oblique direction included)
    grid = grid_from_volume(volume)
    for getter in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(grid, getter)() == getattr(back, getter)(), getter


def test_a_voxel_lands_at_the_same_physical_point_in_both_conventions(context):
    image = blob_image()
    volume = add_volume_from_image(context.scene, image, "input")
    index = (3, 5, 7)  # (i, j, k) = (x, y, z)
    lps = image.TransformIndexToPhysicalPoint(index)
    # Slicer RAS is LPS with the first two axes negated (hand-computed, not via the helper under test)
    ras = (-lps[0], -lps[1], lps[2])
    assert lps_to_ras(lps) == pytest.approx(ras)
    np.testing.assert_allclose(ras_to_ijk(volume, ras), index, atol=1e-6)


def test_transformed_volume_is_refused_with_an_actionable_message(context):
    volume = add_volume_from_image(context.scene, blob_image(), "moved")
    transform = context.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    for convert in (image_from_volume, grid_from_volume):
        with pytest.raises(InputError, match="harden the transform"):
            convert(volume)


def test_roi_crop_and_uncrop_restore_the_input_grid(context):
    image = blob_image(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    volume = add_volume_from_image(context.scene, image, "input")
    roi = context.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    # An axis-aligned box covering voxels x 4..11, y 6..13, z 2..9 (centres), in RAS.
    low = np.array(image.TransformIndexToPhysicalPoint((4, 6, 2)))
    high = np.array(image.TransformIndexToPhysicalPoint((11, 13, 9)))
    centre_lps = (low + high) / 2
    roi.SetCenter(*lps_to_ras(centre_lps))
    roi.SetSize(*(high - low))
    cropped, index = crop_to_box(image, roi_corners_ras(roi), "roi")
    assert index == (4, 6, 2)
    assert cropped.GetSize() == (8, 8, 8)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(cropped),
                                  sitk.GetArrayFromImage(image)[2:10, 6:14, 4:12])
    restored = uncrop(cropped, image, index, fill=0.0)
    array = sitk.GetArrayFromImage(restored)
    assert array.shape == sitk.GetArrayFromImage(image).shape
    np.testing.assert_array_equal(array[2:10, 6:14, 4:12], sitk.GetArrayFromImage(cropped))
    assert array[0].sum() == 0 and volume.GetImageData() is not None


def test_roi_outside_the_volume_is_an_input_error(context):
    image = blob_image(direction=OBLIQUE)
    roi = context.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetCenter(1000.0, 1000.0, 1000.0)
    roi.SetSize(5.0, 5.0, 5.0)
    with pytest.raises(InputError, match="does not overlap"):
        crop_to_box(image, roi_corners_ras(roi), "roi")

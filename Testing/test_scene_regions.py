"""Uncertain regions on a crafted agreement map: found, ranked by size x disagreement, centred in RAS."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from LayerEnsemblesLib.scene import (
    add_volume_from_image,
    create_scene,
    find_uncertain_regions,
    jump_to_region,
)
from scene_support import OBLIQUE, ras_to_ijk


def agreement_map(spacing=(1.0, 1.0, 2.0), direction=OBLIQUE) -> sitk.Image:
    """All heads agree (1.0) except in three planted blocks and one isolated voxel."""
    array = np.ones((20, 30, 40), np.float32)
    array[2:6, 3:7, 4:8] = 0.5        # 64 voxels, disagreement 0.5 -> 32 "voxel-disagreements"
    array[10:12, 20:22, 30:32] = 0.0  # 8 voxels, disagreement 1.0 -> 8
    array[14:18, 2:12, 20:30] = 0.9   # 400 voxels but disagreement 0.1: below the visibility threshold
    array[18, 28, 38] = 0.0           # one voxel: too small to be a region
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((5.0, 6.0, 7.0))
    image.SetDirection(direction)
    return image


def test_planted_regions_are_found_and_ranked():
    image = agreement_map()
    regions = find_uncertain_regions(image, min_disagreement=0.2, min_voxels=3)
    assert [r.voxels for r in regions] == [64, 8]
    voxel_volume = 1.0 * 1.0 * 2.0
    assert regions[0].volume_mm3 == pytest.approx(64 * voxel_volume)
    assert regions[0].mean_disagreement == pytest.approx(0.5)
    assert regions[0].score == pytest.approx(64 * voxel_volume * 0.5)
    assert regions[1].mean_disagreement == pytest.approx(1.0)
    assert regions[1].max_disagreement == pytest.approx(1.0)
    assert [r.rank for r in regions] == [1, 2]
    assert regions[0].bounding_box == (4, 3, 2, 4, 4, 4)


def test_region_centres_are_in_ras():
    image = agreement_map()
    region = find_uncertain_regions(image)[0]
    # centre of voxels 4..7 (x), 3..6 (y), 2..5 (z) is the continuous index (5.5, 4.5, 3.5)
    lps = image.TransformContinuousIndexToPhysicalPoint((5.5, 4.5, 3.5))
    assert region.center_ras == pytest.approx((-lps[0], -lps[1], lps[2]))


def test_ranking_prefers_size_times_disagreement():
    array = np.ones((10, 10, 30), np.float32)
    array[2:4, 2:4, 2:4] = 0.0     # 8 voxels x 1.0 = 8
    array[2:5, 2:5, 10:15] = 0.7   # 45 voxels x 0.3 = 13.5 -> first
    image = sitk.GetImageFromArray(array)
    regions = find_uncertain_regions(image, min_disagreement=0.25)
    assert [r.voxels for r in regions] == [45, 8]
    assert regions[0].score == pytest.approx(13.5, rel=1e-5)


def test_no_disagreement_gives_no_region():
    image = sitk.GetImageFromArray(np.ones((8, 8, 8), np.float32))
    assert find_uncertain_regions(image) == []


def test_jump_centres_every_slice_view_on_the_region():
    context = create_scene()
    image = agreement_map()
    volume = add_volume_from_image(context.scene, image, "agreement")
    region = find_uncertain_regions(image)[1]
    jump_to_region(context, region)
    for slice_node in context.nodes_by_class("vtkMRMLSliceNode"):
        matrix = slice_node.GetSliceToRAS()
        centre = [matrix.GetElement(row, 3) for row in range(3)]
        assert centre == pytest.approx(region.center_ras, abs=1e-6), slice_node.GetName()
    # and that point is inside the planted block (voxels x 30..31, y 20..21, z 10..11)
    np.testing.assert_allclose(ras_to_ijk(volume, region.center_ras), (30.5, 20.5, 10.5), atol=1e-6)

"""Uncertain regions: where the heads disagree, as connected blobs ranked for review.

A reviewer cannot scan a whole heatmap slice by slice, so the low-agreement voxels are grouped into
connected components and ranked by size (mm³) times mean disagreement: a large region where most heads
disagree comes first, an isolated doubtful voxel last. Each region carries its centre in RAS (ITK
reports LPS), ready for the slice views to jump to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import slicer

from .bootstrap import SceneContext
from .geometry import lps_to_ras
from .heatmaps import DEFAULT_VISIBLE_FROM


@dataclass(frozen=True)
class UncertainRegion:
    rank: int
    label: int
    voxels: int
    volume_mm3: float
    mean_disagreement: float
    max_disagreement: float
    score: float
    center_ras: tuple[float, float, float]
    bounding_box: tuple[int, ...]  # (x, y, z, size_x, size_y, size_z) in voxels


def find_uncertain_regions(
    agreement: sitk.Image,
    min_disagreement: float = DEFAULT_VISIBLE_FROM,
    min_voxels: int = 3,
    fully_connected: bool = True,
) -> list[UncertainRegion]:
    """Connected regions where at least ``min_disagreement`` of the heads disagree, best candidates first."""
    disagreement = sitk.Cast(1.0 - sitk.Cast(agreement, sitk.sitkFloat32), sitk.sitkFloat32)
    disagreement.CopyInformation(agreement)
    return regions_from_disagreement(
        sitk.GetArrayViewFromImage(disagreement), disagreement, min_disagreement, min_voxels, fully_connected
    )


def regions_from_disagreement(
    array: np.ndarray,
    grid: sitk.Image,
    min_disagreement: float = DEFAULT_VISIBLE_FROM,
    min_voxels: int = 3,
    fully_connected: bool = True,
) -> list[UncertainRegion]:
    """The regions of a float32 disagreement array (1 - agreement, z y x) on ``grid``'s geometry: e.g. the
    heatmap as displayed, read in place from its volume node (no copy of the full volume).

    The doubtful voxels usually fill a small box of a large volume: the labelling and the statistics run
    on that box only (the same components in the same raster order, so the same regions) instead of on
    every voxel of the volume at each kept-heads change.
    """
    mask = array >= np.float32(min_disagreement)  # BinaryThreshold's test, in the pixel type
    box = mask_bounding_box(mask)
    if box is None:
        return []
    start, stop = box
    index = [int(v) for v in reversed(start)]  # x, y, z
    box_slices = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    inside = sitk.GetImageFromArray(np.ascontiguousarray(array[box_slices], dtype=np.float32))
    inside.SetSpacing(grid.GetSpacing())
    inside.SetDirection(grid.GetDirection())
    inside.SetOrigin(grid.TransformIndexToPhysicalPoint(index))  # as RegionOfInterest would set it
    mask_image = sitk.GetImageFromArray(mask[box_slices].view(np.uint8))
    mask_image.CopyInformation(inside)
    components = sitk.ConnectedComponent(mask_image, fully_connected)
    components = sitk.RelabelComponent(components, minimumObjectSize=int(min_voxels))
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.ComputePerimeterOff()  # on by default, costly, and not used here
    shapes.Execute(components)
    intensities = sitk.LabelIntensityStatisticsImageFilter()
    intensities.Execute(components, inside)
    found = []
    for label in shapes.GetLabels():
        volume = shapes.GetPhysicalSize(label)
        mean = intensities.GetMean(label)
        corner = shapes.GetBoundingBox(label)
        box_in_full = (*(int(a) + b for a, b in zip(corner[:3], index, strict=True)), *map(int, corner[3:]))
        found.append(
            (
                volume * mean,
                label,
                shapes.GetNumberOfPixels(label),
                volume,
                mean,
                intensities.GetMaximum(label),
                lps_to_ras(shapes.GetCentroid(label)),
                box_in_full,
            )
        )
    found.sort(key=lambda row: (-row[0], row[1]))
    return [
        UncertainRegion(rank, label, voxels, volume, mean, maximum, score, center, box)
        for rank, (score, label, voxels, volume, mean, maximum, center, box) in enumerate(found, start=1)
    ]


def mask_bounding_box(mask: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(start, stop) of the smallest box holding every true voxel, array order; None when there is none."""
    start, stop = [], []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        if hits.size == 0:
            return None
        start.append(int(hits[0]))
        stop.append(int(hits[-1]) + 1)
    return tuple(start), tuple(stop)


def jump_to_region(context: SceneContext, region: UncertainRegion) -> None:
    """Centre every slice view on the region (the same as Slicer's "jump slices" on a markup)."""
    slicer.vtkMRMLSliceNode.JumpAllSlices(
        context.scene, *region.center_ras, slicer.vtkMRMLSliceNode.CenteredJumpSlice
    )

"""Uncertain regions: where the heads disagree, as connected blobs ranked for review.

A reviewer cannot scan a whole heatmap slice by slice, so the low-agreement voxels are grouped into
connected components and ranked by size (mm³) times mean disagreement: a large region where most heads
disagree comes first, an isolated doubtful voxel last. Each region carries its centre in RAS (ITK
reports LPS), ready for the slice views to jump to.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def find_uncertain_regions(agreement: sitk.Image, min_disagreement: float = DEFAULT_VISIBLE_FROM,
                           min_voxels: int = 3, fully_connected: bool = True) -> list[UncertainRegion]:
    """Connected regions where at least ``min_disagreement`` of the heads disagree, best candidates first."""
    disagreement = sitk.Cast(1.0 - sitk.Cast(agreement, sitk.sitkFloat32), sitk.sitkFloat32)
    disagreement.CopyInformation(agreement)
    mask = sitk.BinaryThreshold(disagreement, lowerThreshold=float(min_disagreement), upperThreshold=1e9,
                                insideValue=1, outsideValue=0)
    components = sitk.ConnectedComponent(mask, fully_connected)
    components = sitk.RelabelComponent(components, minimumObjectSize=int(min_voxels))
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.Execute(components)
    intensities = sitk.LabelIntensityStatisticsImageFilter()
    intensities.Execute(components, disagreement)
    found = []
    for label in shapes.GetLabels():
        volume = shapes.GetPhysicalSize(label)
        mean = intensities.GetMean(label)
        found.append((volume * mean, label, shapes.GetNumberOfPixels(label), volume, mean,
                      intensities.GetMaximum(label), lps_to_ras(shapes.GetCentroid(label)),
                      tuple(int(v) for v in shapes.GetBoundingBox(label))))
    found.sort(key=lambda row: (-row[0], row[1]))
    return [UncertainRegion(rank, label, voxels, volume, mean, maximum, score, center, box)
            for rank, (score, label, voxels, volume, mean, maximum, center, box) in enumerate(found, start=1)]


def jump_to_region(context: SceneContext, region: UncertainRegion) -> None:
    """Centre every slice view on the region (the same as Slicer's "jump slices" on a markup)."""
    slicer.vtkMRMLSliceNode.JumpAllSlices(context.scene, *region.center_ras,
                                          slicer.vtkMRMLSliceNode.CenteredJumpSlice)

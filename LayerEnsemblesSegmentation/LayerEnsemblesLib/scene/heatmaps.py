"""Uncertainty heatmaps as volume nodes, drawn over the anatomy in every slice view.

Every heatmap is stored so that higher means more uncertain, on a fixed 0-1 scale: the agreement map is
shown as disagreement (1 - agreement, the fraction of kept heads that disagree with the ensemble label),
and entropy, mutual information and variance are divided by their largest possible value. One colour
table, one window and one visibility threshold then read the same for every map and every case, and
the display threshold hides the confident voxels (below it) so only the doubtful ones are coloured.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from .bootstrap import SceneContext
from .colors import heatmap_color_table
from .geometry import apply_image_geometry
from .segmentation import INPUT_REFERENCE_ROLE, ROLE_ATTRIBUTE, place_next_to

HEATMAP_KINDS = ("agreement", "entropy", "mutual_information", "variance")
HEATMAP_LABELS = {
    "agreement": "layer disagreement",
    "entropy": "entropy",
    "mutual_information": "mutual information",
    "variance": "variance",
}
KIND_ATTRIBUTE = "LayerEnsembles.HeatmapKind"
QUANTITY_ATTRIBUTE = "LayerEnsembles.HeatmapQuantity"
# Voxels below this are transparent: with 5-10 kept heads one dissenting head (0.1-0.2) is boundary noise.
DEFAULT_VISIBLE_FROM = 0.2
DEFAULT_OPACITY = 0.5


def heatmap_scale(kind: str, num_classes: int) -> float:
    """The largest value a map can take, so that dividing by it maps the map onto [0, 1]."""
    if kind in ("entropy", "mutual_information"):
        return math.log(max(num_classes, 2))
    if kind == "variance":
        return 0.25  # the variance of values in [0, 1] is at most 1/4
    return 1.0


def display_image(kind: str, image: sitk.Image, num_classes: int) -> sitk.Image:
    """The map as displayed: uncertainty-oriented, float32, clamped to [0, 1], same geometry."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    if kind == "agreement":
        shown = 1.0 - image
    else:
        shown = image / heatmap_scale(kind, num_classes)
    shown = sitk.Clamp(shown, sitk.sitkFloat32, 0.0, 1.0)
    shown.CopyInformation(image)
    return shown


def quantity_description(kind: str, num_classes: int) -> str:
    if kind == "agreement":
        return "1 - agreement: fraction of kept heads whose label differs from the ensemble's"
    return f"{HEATMAP_LABELS[kind]} / {heatmap_scale(kind, num_classes):.4g} (its maximum)"


def write_heatmap(
    context: SceneContext,
    input_node,
    kind: str,
    image: sitk.Image,
    num_classes: int,
    node=None,
    visible_from: float = DEFAULT_VISIBLE_FROM,
):
    """Create (or update in place) the heatmap volume node of one kind, styled and with a colour legend.

    The displayed values are computed straight into the node's voxel array (reused while the size stays):
    a kept-heads change on a large volume then costs one pass over the map, not a chain of full-volume
    images and copies.
    """
    if kind not in HEATMAP_KINDS:
        raise ValueError(f"unknown heatmap kind {kind!r}; expected one of {HEATMAP_KINDS}")
    created = node is None
    if created:
        name = context.scene.GenerateUniqueName(f"{input_node.GetName()} {HEATMAP_LABELS[kind]}")
        node = context.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    target = _float_voxels(node, tuple(reversed(image.GetSize())))
    write_display_values(kind, image, num_classes, target)
    _voxels_modified(node)
    apply_image_geometry(node, image)
    if created:
        node.CreateDefaultDisplayNodes()
        node.SetAttribute(ROLE_ATTRIBUTE, "heatmap")
        node.SetAttribute(KIND_ATTRIBUTE, kind)
        node.SetAttribute(QUANTITY_ATTRIBUTE, quantity_description(kind, num_classes))
        node.SetNodeReferenceID(INPUT_REFERENCE_ROLE, input_node.GetID())
        place_next_to(context, node, input_node)
    # Same geometry as the input by construction: copy it exactly to avoid float round-off between them.
    node.CopyOrientation(input_node)
    style_heatmap(context, node, visible_from)
    return node


def write_display_values(kind: str, image: sitk.Image, num_classes: int, out: np.ndarray) -> None:
    """``display_image``'s values written into ``out`` (float32, z y x); the same numbers, bit for bit."""
    if kind != "agreement":
        # Held in a name: a view does not keep its image alive, and a temporary's buffer is freed at once.
        shown = display_image(kind, image, num_classes)
        out[...] = sitk.GetArrayViewFromImage(shown)
        return
    agreement = sitk.GetArrayViewFromImage(image)
    if agreement.dtype != np.float32:
        agreement = agreement.astype(np.float32)
    np.subtract(np.float32(1.0), agreement, out=out)
    np.clip(out, np.float32(0.0), np.float32(1.0), out=out)


def _float_voxels(node, shape: tuple[int, ...]) -> np.ndarray:
    """The node's float32 voxels as a writable (z, y, x) array; allocated only when the size changes."""
    image_data = node.GetImageData()
    if image_data is None:
        image_data = vtk.vtkImageData()
        node.SetAndObserveImageData(image_data)
    scalars = image_data.GetPointData().GetScalars()
    if (
        scalars is None
        or scalars.GetDataType() != vtk.VTK_FLOAT
        or scalars.GetNumberOfComponents() != 1
        or tuple(reversed(image_data.GetDimensions())) != shape
    ):
        image_data.SetDimensions(*reversed(shape))
        image_data.AllocateScalars(vtk.VTK_FLOAT, 1)
    return slicer.util.arrayFromVolume(node)


def _voxels_modified(node) -> None:
    """The notifications ``slicer.util.updateVolumeFromArray`` sends, after an in-place write."""
    image_data = node.GetImageData()
    image_data.GetPointData().GetScalars().Modified()
    image_data.Modified()
    node.StorableModified()
    node.Modified()
    node.InvokeEvent(slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, node)


def style_heatmap(context: SceneContext, node, visible_from: float = DEFAULT_VISIBLE_FROM) -> None:
    display = node.GetDisplayNode()
    if display is None:
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
    was_modifying = display.StartModify()
    display.SetAndObserveColorNodeID(heatmap_color_table(context).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.AutoThresholdOff()
    display.SetThreshold(visible_from, 1.0)
    display.SetApplyThreshold(1)
    display.SetInterpolate(0)
    display.EndModify(was_modifying)
    legend = context.colors_logic.GetColorLegendDisplayNode(node)
    if legend is None:
        legend = context.colors_logic.AddDefaultColorLegendDisplayNode(node)
    if legend is not None:
        legend.SetTitleText(HEATMAP_LABELS.get(node.GetAttribute(KIND_ATTRIBUTE) or "", "uncertainty"))


def show_in_slice_views(
    context: SceneContext, background_node=None, foreground_node=None, opacity: float | None = None
) -> None:
    """Show the input as background and a heatmap as foreground in every slice view."""
    for composite in context.nodes_by_class("vtkMRMLSliceCompositeNode"):
        was_modifying = composite.StartModify()
        if background_node is not None:
            composite.SetBackgroundVolumeID(background_node.GetID())
        if foreground_node is not None:
            composite.SetForegroundVolumeID(foreground_node.GetID())
        if opacity is not None:
            composite.SetForegroundOpacity(float(opacity))
        composite.EndModify(was_modifying)
    shown_id = foreground_node.GetID() if foreground_node is not None else None
    for volume in context.nodes_by_class("vtkMRMLScalarVolumeNode"):
        if volume.GetAttribute(ROLE_ATTRIBUTE) != "heatmap":
            continue
        legend = context.colors_logic.GetColorLegendDisplayNode(volume)
        if legend is not None:
            legend.SetVisibility(volume.GetID() == shown_id)


def set_heatmap_opacity(context: SceneContext, opacity: float) -> None:
    for composite in context.nodes_by_class("vtkMRMLSliceCompositeNode"):
        composite.SetForegroundOpacity(float(opacity))


def module_volume_ids(context: SceneContext) -> list[str]:
    """IDs of the volumes this module made (heatmaps): input selectors hide them, they are not inputs."""
    return [
        node.GetID()
        for node in context.nodes_by_class("vtkMRMLScalarVolumeNode")
        if node.GetAttribute(ROLE_ATTRIBUTE) == "heatmap"
    ]

"""The segmentation node: one segment per class, written in place, and able to tell when a user edited it.

Segments get stable IDs (``class_<label value>``) so that recombination rewrites the same segments and
anything that refers to them (Segment Editor, statistics, saved scenes) stays valid. After every write the
node records a content hash of its labelmaps in the reference geometry; a later mismatch means someone
painted, erased or added a segment, and the logic then leaves that node alone.
"""

from __future__ import annotations

import hashlib

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from .bootstrap import SceneContext
from .geometry import ijk_to_ras_matrix

CONTENT_HASH_ATTRIBUTE = "LayerEnsembles.ContentHash"
ROLE_ATTRIBUTE = "LayerEnsembles.Role"
INPUT_REFERENCE_ROLE = "LayerEnsembles.input"


def segment_id(value: int) -> str:
    return f"class_{int(value)}"


def place_next_to(context: SceneContext, node, anchor_node) -> None:
    """Put ``node`` in the same subject-hierarchy folder (patient/study) as ``anchor_node``."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(context.scene)
    if hierarchy is None:
        return
    anchor_item = hierarchy.GetItemByDataNode(anchor_node)
    item = hierarchy.GetItemByDataNode(node)
    if anchor_item and item:
        hierarchy.SetItemParent(item, hierarchy.GetItemParent(anchor_item))


def create_segmentation_node(context: SceneContext, input_node, classes, name: str):
    """An empty segmentation node with one segment per foreground class, on the input's geometry."""
    node = context.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(input_node)
    node.SetNodeReferenceID(INPUT_REFERENCE_ROLE, input_node.GetID())
    node.SetAttribute(ROLE_ATTRIBUTE, "segmentation")
    segmentation = node.GetSegmentation()
    for info in classes:
        if int(info.value) == 0:
            continue
        color = [channel / 255.0 for channel in info.color]
        segmentation.AddEmptySegment(segment_id(info.value), info.name, color)
    place_next_to(context, node, input_node)
    return node


def write_segments(node, labels: sitk.Image, classes) -> None:
    """Replace each class segment's voxels with ``labels == value`` (same node, same segment IDs)."""
    array = sitk.GetArrayViewFromImage(labels)
    to_ras = ijk_to_ras_matrix(labels)
    segmentation = node.GetSegmentation()
    was_modifying = node.StartModify()
    try:
        for info in classes:
            value = int(info.value)
            if value == 0:
                continue
            sid = segment_id(value)
            if segmentation.GetSegment(sid) is None:
                segmentation.AddEmptySegment(sid, info.name, [c / 255.0 for c in info.color])
            mask = slicer.vtkOrientedImageData()
            mask.SetDimensions(*reversed(array.shape))
            mask.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
            voxels = numpy_support.vtk_to_numpy(mask.GetPointData().GetScalars()).reshape(array.shape)
            np.equal(array, value, out=voxels.view(np.bool_))  # one pass, straight into the labelmap
            mask.SetImageToWorldMatrix(to_ras)
            if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(mask, node, sid):
                raise RuntimeError(f"{node.GetName()}: could not write segment {info.name}")
    finally:
        node.EndModify(was_modifying)
    node.SetAttribute(CONTENT_HASH_ATTRIBUTE, content_hash(node))


# Segmentation node -> (what its labelmaps were, their content hash): the in-memory short cut of
# ``is_user_edited``. VTK modification times come from one global counter, so an unchanged stamp means no
# voxel was written since the hash was taken, and a threshold change or a redraw needs no full-volume hash.
_KNOWN_CONTENT: dict[tuple[int, str], tuple[tuple, str]] = {}


def _content_stamp(node) -> tuple | None:
    """Segment IDs, their labelmap objects' modification times and the reference geometry; None when a
    segment has no binary labelmap (the hash is then always computed)."""
    segmentation = node.GetSegmentation()
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    parts: list = [
        segmentation.GetSourceRepresentationName(),
        segmentation.GetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
        ),
    ]
    for sid in segmentation.GetSegmentIDs():
        labelmap = segmentation.GetSegment(sid).GetRepresentation(name)
        if labelmap is None:
            return None
        parts.append((sid, labelmap.GetMTime()))
    return tuple(parts)


def content_hash(node) -> str:
    """A digest of every segment's voxels resampled to the reference geometry, plus the segment IDs.

    The reference geometry makes the digest independent of how the labelmaps are stored (shared or
    separate layers, cropped extents), so it survives saving and reloading the scene.
    """
    merged = slicer.vtkOrientedImageData()
    ids = list(node.GetSegmentation().GetSegmentIDs())
    digest = hashlib.sha1(("|".join(ids)).encode())
    if ids:
        node.GenerateMergedLabelmapForAllSegments(merged, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        scalars = merged.GetPointData().GetScalars()
        if scalars is not None:
            digest.update(str(merged.GetDimensions()).encode())
            # the int16 bytes, hashed from the array itself (no extra copy when it is int16 already)
            digest.update(np.ascontiguousarray(numpy_support.vtk_to_numpy(scalars), dtype=np.int16))
    value = digest.hexdigest()
    stamp = _content_stamp(node)
    if stamp is not None:
        _KNOWN_CONTENT[_node_key(node)] = (stamp, value)
    return value


def _node_key(node) -> tuple[int, str]:
    return id(node.GetScene()), node.GetID() or ""


def is_user_edited(node) -> bool:
    """True when the segments differ from what this extension last wrote."""
    stored = node.GetAttribute(CONTENT_HASH_ATTRIBUTE)
    if stored is None:
        return False
    known = _KNOWN_CONTENT.get(_node_key(node))
    if known is not None and known[0] == _content_stamp(node):
        return stored != known[1]
    return stored != content_hash(node)


def segment_array(node, value: int) -> np.ndarray:
    """A class segment as a (z, y, x) array in the reference geometry (for tests and statistics)."""
    merged = slicer.vtkOrientedImageData()
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id(value))
    node.GenerateMergedLabelmapForAllSegments(
        merged, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, None, ids
    )
    shape = tuple(reversed(merged.GetDimensions()))
    return numpy_support.vtk_to_numpy(merged.GetPointData().GetScalars()).reshape(shape) > 0

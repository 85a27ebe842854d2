"""Moving images between SimpleITK (LPS) and MRML volume nodes (RAS) without losing geometry.

ITK and DICOM describe space in LPS (x to the patient's left, y to the back); Slicer works in RAS. The first
two axes flip sign between them, for positions and for direction matrices. Getting this wrong shows up as
a segmentation mirrored left-right over the input, so every conversion goes through the two helpers here.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from ..errors import InputError
from ..grids import ImageGrid, place_on_grid

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def lps_to_ras(point) -> tuple[float, float, float]:
    return tuple(float(v) for v in LPS_TO_RAS @ np.asarray(point, dtype=float))


def ras_to_lps(point) -> tuple[float, float, float]:
    return lps_to_ras(point)  # the flip is its own inverse


def ijk_to_ras_matrix(image: sitk.Image) -> vtk.vtkMatrix4x4:
    """The 4x4 IJK-to-RAS matrix of an image: RAS direction columns scaled by spacing, RAS origin."""
    direction = LPS_TO_RAS @ np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = vtk.vtkMatrix4x4()
    spacing = image.GetSpacing()
    origin = lps_to_ras(image.GetOrigin())
    for row in range(3):
        for column in range(3):
            matrix.SetElement(row, column, direction[row, column] * spacing[column])
        matrix.SetElement(row, 3, origin[row])
    return matrix


def apply_image_geometry(volume_node, image: sitk.Image) -> None:
    direction = LPS_TO_RAS @ np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = vtk.vtkMatrix4x4()
    for row in range(3):
        for column in range(3):
            matrix.SetElement(row, column, direction[row, column])
    volume_node.SetIJKToRASDirectionMatrix(matrix)
    volume_node.SetSpacing(*image.GetSpacing())
    volume_node.SetOrigin(*lps_to_ras(image.GetOrigin()))


def image_from_volume(volume_node) -> sitk.Image:
    """A copy of a scalar volume node as a SimpleITK image with the same physical geometry."""
    array = _checked_voxels(volume_node)
    return place_on_grid(sitk.GetImageFromArray(np.array(array, copy=True)), _grid_of(volume_node, array))


def grid_from_volume(volume_node) -> ImageGrid:
    """The grid (LPS) ``image_from_volume`` would give, without copying a voxel.

    Recombining a reopened case reads only its input's geometry; a float copy of a large volume for
    that would cost its whole size in memory and a pass over it.
    """
    return _grid_of(volume_node, _checked_voxels(volume_node))


def _grid_of(volume_node, array: np.ndarray) -> ImageGrid:
    """The LPS grid of a checked volume node whose voxels (z, y, x) are ``array``."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(matrix)
    ras_direction = np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])
    return ImageGrid.from_lists(
        tuple(reversed(array.shape)),
        volume_node.GetSpacing(),
        ras_to_lps(volume_node.GetOrigin()),
        tuple((LPS_TO_RAS @ ras_direction).ravel()),
    )


def _checked_voxels(volume_node) -> np.ndarray:
    """The node's voxels as a view (z, y, x), after the checks every conversion to an image needs."""
    if volume_node is None or volume_node.GetImageData() is None:
        raise InputError("input volume: no volume selected, or the volume has no image data")
    if volume_node.GetParentTransformNode() is not None:
        raise InputError(
            f"{volume_node.GetName()}: the volume is under a transform; harden the transform "
            "(Data module, right-click > Harden transform) and run again"
        )
    array = slicer.util.arrayFromVolume(volume_node)
    if array.ndim != 3:
        raise InputError(
            f"{volume_node.GetName()}: expected a single-component 3D volume, got shape {array.shape}"
        )
    return array


def update_volume_from_image(volume_node, image: sitk.Image) -> None:
    """Replace a volume node's voxels and geometry in place (same node ID, so views and references stay)."""
    slicer.util.updateVolumeFromArray(volume_node, sitk.GetArrayFromImage(image))
    apply_image_geometry(volume_node, image)


def add_volume_from_image(scene, image: sitk.Image, name: str, class_name: str = "vtkMRMLScalarVolumeNode"):
    node = scene.AddNewNodeByClass(class_name, name)
    update_volume_from_image(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def oriented_image_from_array(array: np.ndarray, reference: sitk.Image) -> slicer.vtkOrientedImageData:
    """A segment labelmap (``vtkOrientedImageData``) with the reference image's geometry."""
    oriented = slicer.vtkOrientedImageData()
    oriented.SetDimensions(*reversed(array.shape))
    oriented.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(oriented.GetPointData().GetScalars())[:] = array.astype(np.uint8).ravel()
    oriented.SetImageToWorldMatrix(ijk_to_ras_matrix(reference))
    return oriented


def geometry_only(image: sitk.Image) -> ImageGrid:
    """``image``'s grid without its voxels, for code that reads only the geometry.

    The review keeps a reference grid per case for as long as the case is open; holding the input's
    voxels there (float32 or float64), or even one byte per voxel, would cost memory for nothing.
    """
    return ImageGrid.of(image)


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-4) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )


def roi_corners_ras(roi_node) -> list[tuple[float, float, float]]:
    """The eight corners of a markups ROI in RAS (read on the main thread, used anywhere)."""
    if roi_node.GetParentTransformNode() is not None:
        raise InputError(f"{roi_node.GetName()}: the ROI is under a transform; harden it and run again")
    center = [0.0, 0.0, 0.0]
    roi_node.GetCenterWorld(center)
    size = roi_node.GetSize()
    to_world = roi_node.GetObjectToWorldMatrix()
    axes = [np.array([to_world.GetElement(r, c) for r in range(3)]) for c in range(3)]
    corners = []
    for sx in (-0.5, 0.5):
        for sy in (-0.5, 0.5):
            for sz in (-0.5, 0.5):
                offset = sx * size[0] * axes[0] + sy * size[1] * axes[1] + sz * size[2] * axes[2]
                corner = np.array(center) + offset
                corners.append(tuple(float(v) for v in corner))
    return corners


def crop_to_box(
    image: sitk.Image, corners_ras, source: str = "ROI"
) -> tuple[sitk.Image, tuple[int, int, int]]:
    """The part of ``image`` inside a box given by its RAS corners, and the index of its first voxel.

    The corners are mapped to voxel indices, so a box rotated against the image axes crops to the
    voxel-aligned region that contains it; a voxel is in when its centre is.
    """
    indices = np.array([image.TransformPhysicalPointToContinuousIndex(ras_to_lps(c)) for c in corners_ras])
    # Voxels whose centres lie inside the box (with a small tolerance for corners on a voxel centre).
    lower = np.maximum(np.ceil(indices.min(axis=0) - 1e-4).astype(int), 0)
    upper = np.minimum(np.floor(indices.max(axis=0) + 1e-4).astype(int) + 1, np.array(image.GetSize()))
    if np.any(upper <= lower):
        raise InputError(f"{source}: the ROI does not overlap the input volume")
    index = tuple(int(v) for v in lower)
    cropped = sitk.RegionOfInterest(image, [int(v) for v in upper - lower], list(index))
    return cropped, index


def uncrop(image: sitk.Image, reference: sitk.Image, index, fill: float) -> sitk.Image:
    """Paste a result computed on a crop back into the full reference grid, ``fill`` elsewhere."""
    if index is None or same_geometry(image, reference):
        return image
    canvas = place_on_grid(sitk.Image(reference.GetSize(), image.GetPixelID()), reference)
    if fill:
        canvas = place_on_grid(sitk.Cast(canvas + fill, image.GetPixelID()), reference)
    return sitk.Paste(canvas, image, image.GetSize(), [0, 0, 0], [int(v) for v in index])

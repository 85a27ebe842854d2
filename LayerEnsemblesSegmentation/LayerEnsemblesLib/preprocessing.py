"""Preprocessing shared by training and inference, driven only by the model's metadata.

Training and inference call the same functions with the same metadata fields, so a model file
alone reproduces what the network saw. The network works in "network space": the image reoriented
to the model's orientation, resampled to its target spacing, normalised and padded to its size
divisor. :func:`to_input_space` maps any network-space array back onto the input's exact geometry
(size, spacing, origin, direction) with SimpleITK, so overlays line up in Slicer.

Axis orders: ``patch_size`` and ``size_divisor`` follow the array order (z, y, x);
``target_spacing`` follows SimpleITK's (x, y, z) order, in millimetres.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .contract import ModelMetadata, channel_normalizations
from .errors import InputError
from .grids import ImageGrid, place_on_grid, resample_onto

MAX_ANISOTROPY = 6.0


@dataclass
class NetworkGeometry:
    """How an input image was mapped into network space, so outputs can be mapped back."""

    reference: sitk.Image  # the resampled, reoriented image before padding (geometry only is used)
    padding: list[tuple[int, int]]  # (before, after) per array axis (z, y, x)
    shape: tuple[int, ...]  # network-space array shape (z, y, x), after padding


def check_image(image: sitk.Image, source: str, expected_channels: int = 1) -> None:
    """Reject images no model should be run on, with one line that names the file and the problem."""
    if image.GetDimension() != 3:
        raise InputError(f"{source}: a {image.GetDimension()}D image; expected a 3D volume")
    channels = image.GetNumberOfComponentsPerPixel()
    if channels != expected_channels:
        raise InputError(
            f"{source}: image has {channels} components per voxel but the model expects "
            f"{expected_channels} channel(s)"
        )
    array = sitk.GetArrayViewFromImage(image)
    if array.size == 0:
        raise InputError(f"{source}: empty image")
    if not np.issubdtype(array.dtype, np.integer):
        finite = np.isfinite(array)
        if not finite.all():
            raise InputError(f"{source}: {int((~finite).sum())} voxels are NaN or infinite")
    if array.min() == array.max():
        raise InputError(f"{source}: constant image (every voxel is {array.flat[0]}); nothing to segment")


def resolved_spacing(
    target_spacing: Sequence[float | None] | None, image_spacing: Sequence[float]
) -> list[float] | None:
    """The model's spacing with a null axis (a 2D model's z: slices kept) taken from the image itself.

    nnU-Net's 2D configurations resample each slice in-plane to the plans' spacing and leave the
    slice spacing alone; a converted 2D model says so with ``[x, y, null]``.
    """
    if target_spacing is None:
        return None
    return [float(s) if t is None else float(t) for t, s in zip(target_spacing, image_spacing, strict=True)]


def check_anisotropy(
    image: sitk.Image, source: str, target_spacing: Sequence[float | None] | None, spatial_dims: int = 3
) -> None:
    """Refuse voxels far more elongated than the model's own; a 2D model only looks in-plane (x, y)."""
    axes = 3 if spatial_dims == 3 else 2
    spacing = np.asarray(image.GetSpacing(), float)[:axes]
    target_spacing = resolved_spacing(target_spacing, image.GetSpacing())
    target = np.asarray(target_spacing, float)[:axes] if target_spacing else None
    ratio = spacing.max() / spacing.min()
    target_ratio = target.max() / target.min() if target is not None else 1.0
    if ratio > MAX_ANISOTROPY * target_ratio:
        shown = tuple(round(float(s), 3) for s in image.GetSpacing())
        raise InputError(
            f"{source}: extreme anisotropy (spacing {shown} mm, "
            f"ratio {ratio:.1f}); resample it to near-isotropic voxels first"
        )


def orient(image: sitk.Image, orientation: str | None) -> sitk.Image:
    if not orientation:
        return image
    return sitk.DICOMOrient(image, orientation)


def resample_to_spacing(image: sitk.Image, spacing: list[float] | None, is_label: bool) -> sitk.Image:
    """Resample onto a grid with ``spacing`` covering the same physical extent, same direction."""
    if spacing is None or np.allclose(image.GetSpacing(), spacing, rtol=1e-3):
        return image
    old_size = np.asarray(image.GetSize(), float)
    old_spacing = np.asarray(image.GetSpacing(), float)
    new_spacing = np.asarray(spacing, float)
    new_size = np.maximum(1, np.round(old_size * old_spacing / new_spacing)).astype(int)
    # keep the grid centred on the same physical box: the first voxel centre moves by half the change
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    shift = direction @ ((new_spacing - old_spacing) / 2.0)
    origin = np.asarray(image.GetOrigin()) + shift
    return sitk.Resample(
        image,
        [int(s) for s in new_size],
        sitk.Transform(),
        sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear,
        tuple(origin),
        tuple(float(s) for s in new_spacing),
        image.GetDirection(),
        0,
        image.GetPixelID(),
    )


def normalize(array: np.ndarray, normalization: dict) -> np.ndarray:
    """Intensity normalisation; robust percentile clip plus z-score by default."""
    array = array.astype(np.float32, copy=False)
    method = normalization.get("method", "percentile_zscore")
    if method == "none":
        return array
    if method == "ct_window":
        center, width = float(normalization["center"]), float(normalization["width"])
        return np.clip((array - center) / (width / 2.0), -1.0, 1.0).astype(np.float32)
    if method == "clip_zscore":  # fixed dataset statistics (nnU-Net's CTNormalization)
        clipped = np.clip(array, float(normalization["lower"]), float(normalization["upper"]))
        return ((clipped - float(normalization["mean"])) / max(float(normalization["std"]), 1e-8)).astype(
            np.float32
        )
    if method == "percentile_zscore":
        low, high = np.percentile(array, [normalization.get("lower", 0.5), normalization.get("upper", 99.5)])
        array = np.clip(array, low, high)
    std = float(array.std())
    return ((array - float(array.mean())) / (std if std > 0 else 1.0)).astype(np.float32)


def padding_for(
    shape: tuple[int, ...], divisor: list[int], minimum: list[int] | None = None
) -> list[tuple[int, int]]:
    """Symmetric padding so each axis is a multiple of its divisor (and at least ``minimum``)."""
    pads = []
    for axis, size in enumerate(shape):
        target = max(size, minimum[axis] if minimum else 0)
        target = int(np.ceil(target / divisor[axis]) * divisor[axis])
        before = (target - size) // 2
        pads.append((before, target - size - before))
    return pads


def network_divisor(metadata: ModelMetadata) -> list[int]:
    """The divisor per array axis (z, y, x); 2D models run on axial slices, so z is free."""
    if metadata.spatial_dims == 3:
        return list(metadata.size_divisor)
    return [1, *metadata.size_divisor]


def to_network_space(
    image: sitk.Image, metadata: ModelMetadata, source: str = "image"
) -> tuple[np.ndarray, NetworkGeometry]:
    """Map an input image into network space: a float32 array [C, z, y, x] and its geometry."""
    check_image(image, source, metadata.in_channels)
    check_anisotropy(image, source, metadata.target_spacing, metadata.spatial_dims)
    image = orient(image, metadata.orientation)
    spacing = resolved_spacing(metadata.target_spacing, image.GetSpacing())
    image = resample_to_spacing(image, spacing, is_label=False)
    array = sitk.GetArrayFromImage(image)
    array = array[None] if image.GetNumberOfComponentsPerPixel() == 1 else np.moveaxis(array, -1, 0)
    divisor = network_divisor(metadata)
    too_small = [a for a in range(3) if array.shape[1 + a] < divisor[a]]
    if too_small and not metadata.pad_to_patch:
        raise InputError(
            f"{source}: volume of {array.shape[1:]} voxels (z, y, x) in network space is smaller "
            f"than the network's size divisor {divisor}"
        )
    settings = channel_normalizations(metadata.normalization, len(array))
    channels = [normalize(c, s) for c, s in zip(array, settings, strict=True)]
    minimum = None
    if metadata.pad_to_patch:  # as nnU-Net and MONAI's sliding window: never a window below the patch
        minimum = list(metadata.patch_size) if metadata.spatial_dims == 3 else [1, *metadata.patch_size]
    pads = padding_for(array.shape[1:], divisor, minimum)
    padded = np.stack(
        [
            np.pad(
                c, pads, constant_values=float(c.min()) if metadata.pad_value is None else metadata.pad_value
            )
            for c in channels
        ]
    )
    return padded.astype(np.float32, copy=False), NetworkGeometry(image, pads, padded.shape[1:])


def label_to_network_space(
    label: sitk.Image, geometry: NetworkGeometry, metadata: ModelMetadata
) -> np.ndarray:
    """The label resampled (nearest neighbour) onto the same network-space grid as its image."""
    label = orient(label, metadata.orientation)
    resampled = sitk.Resample(label, geometry.reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return np.pad(sitk.GetArrayFromImage(resampled), geometry.padding, mode="constant").astype(np.int64)


def to_input_space(
    array: np.ndarray, geometry: NetworkGeometry, input_image: sitk.Image | ImageGrid, is_label: bool
) -> sitk.Image:
    """Map a network-space array [z, y, x] back onto ``input_image``'s exact grid (the image or its
    ImageGrid)."""
    slices = tuple(
        slice(before, size - after)
        for (before, after), size in zip(geometry.padding, array.shape, strict=True)
    )
    cropped = np.ascontiguousarray(array[slices])
    image = sitk.GetImageFromArray(cropped)
    image.CopyInformation(geometry.reference)
    if same_grid(image, input_image):  # nothing to interpolate: skip a full-volume resample
        return place_on_grid(image, input_image)
    return resample_onto(image, input_image, sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear)


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """True when two images share size, spacing, origin and direction (to well below a voxel)."""
    spacing = np.asarray(a.GetSpacing(), float)
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(spacing, b.GetSpacing(), rtol=1e-6, atol=0)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=1e-4 * spacing.min())
        and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-6)
    )

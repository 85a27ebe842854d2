"""Checks that run before any work: inputs the network cannot represent and runs that would explode.

Each refusal is one line that names the input and says what to do, raised before resampling or the
first forward pass, because the alternative is a wrong result (a float64 image that is constant in
float32, a boolean mask taken for an image), a TorchScript or ITK message, or an hour of resampling
without a word (a 5 mm input for a 0.5 mm model, or a header in cm read as mm, is a thousand times
more voxels).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

# Network-space voxels may exceed the input's by this factor (4x per axis) before a run needs
# confirmation: a 2 mm scan for a 1 mm model (8x) is normal; 5 mm slices for a 0.5 mm model are not.
MAX_UPSAMPLING = 64.0
FLOAT32_MAX = float(np.finfo(np.float32).max)


def array_as_image(array_like, spacing: Sequence[float] | None, source: str) -> sitk.Image:
    """A SimpleITK image from a numpy array (z, y, x[, channels]); refuses what would go wrong silently."""
    array = np.asarray(array_like)
    kind = array.dtype
    if kind == np.bool_:
        raise InputError(
            f"{source}: a boolean array is a mask, not an image; pass the intensities "
            "(or array.astype(np.float32) if it really is the image)"
        )
    if kind == np.float16:
        raise InputError(f"{source}: a float16 array; convert it first with array.astype(np.float32)")
    if not (np.issubdtype(kind, np.integer) or np.issubdtype(kind, np.floating)):
        raise InputError(f"{source}: an array of {kind} values; pass numbers (integers or float32/float64)")
    if array.ndim not in (3, 4):
        raise InputError(
            f"{source}: an array of shape {array.shape}; expected (z, y, x) or (z, y, x, channels)"
        )
    image = sitk.GetImageFromArray(array, isVector=array.ndim == 4)
    image.SetSpacing(checked_spacing(spacing, source))
    return image


def checked_spacing(spacing: Sequence[float] | None, source: str) -> tuple[float, float, float]:
    """Three finite positive millimetre values (x, y, z); ``None`` means 1 mm."""
    if spacing is None:
        return (1.0, 1.0, 1.0)
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(
            f"{source}: spacing {spacing!r} must be three positive finite numbers (x, y, z in mm)"
        )
    return values  # type: ignore[return-value]


def check_geometry(image: sitk.Image, source: str) -> None:
    """Spacing, origin and direction a resampler can use (NaN spacing would resample to nothing)."""
    spacing = image.GetSpacing()
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"{source}: spacing {tuple(spacing)} must be positive finite millimetres")
    if not all(math.isfinite(v) for v in image.GetOrigin()):
        raise InputError(f"{source}: origin {tuple(image.GetOrigin())} is not finite")
    dimension = image.GetDimension()
    direction = np.asarray(image.GetDirection(), float).reshape(dimension, dimension)
    if not np.isfinite(direction).all() or abs(np.linalg.det(direction)) < 1e-6:
        raise InputError(f"{source}: direction matrix {tuple(image.GetDirection())} is not a rotation")


def check_float32_values(image: sitk.Image, source: str) -> None:
    """The network sees float32: values beyond its range, or contrast float32 rounds away, are refused."""
    array = sitk.GetArrayViewFromImage(image)
    if array.size == 0 or array.dtype == np.float32 or array.dtype.itemsize < 4:
        return  # float32 itself and small integers are exact in float32
    low, high = float(np.nanmin(array)), float(np.nanmax(array))
    if max(abs(low), abs(high)) > FLOAT32_MAX:
        raise InputError(
            f"{source}: values up to {max(abs(low), abs(high)):.3g} are beyond float32 (the network's "
            f"type, max {FLOAT32_MAX:.3g}); rescale the image"
        )
    if low != high and np.float32(low) == np.float32(high):  # rounding is monotonic: all values collapse
        raise InputError(
            f"{source}: the values ({low!r} to {high!r}) all become {float(np.float32(low))!r} in float32, "
            "the network's type; subtract the offset or rescale the image first"
        )


def network_voxels(image: sitk.Image, target_spacing: Sequence[float | None] | None) -> int:
    """Voxels the image has once resampled to the model's spacing (reorientation only permutes axes).

    A null axis (a 2D model's z) keeps the image's own spacing.
    """
    size = np.asarray(image.GetSize(), float)
    if not target_spacing:
        return int(np.prod(size))
    spacing = np.asarray(image.GetSpacing(), float)
    target = np.asarray([s if t is None else t for t, s in zip(target_spacing, spacing, strict=True)], float)
    return int(np.prod(np.maximum(1, np.round(size * spacing / target))))


def check_network_size(
    image: sitk.Image,
    target_spacing: Sequence[float | None] | None,
    bytes_per_voxel: float,
    memory_budget_gb: float | None,
    source: str,
) -> None:
    """Refuse, with an estimate, a resampling that multiplies the work or cannot fit in memory.

    ``bytes_per_voxel`` is the engine's own count of what it holds per network-space voxel. The limit
    is the memory budget when one is given, else the machine's physical memory.
    """
    before = int(np.prod(image.GetSize()))
    after = network_voxels(image, target_spacing)
    needed = after * bytes_per_voxel
    spacing = tuple(round(float(s), 4) for s in image.GetSpacing())
    if after > MAX_UPSAMPLING * before:
        raise InputError(
            f"{source}: resampling from {spacing} mm to the model's {list(target_spacing or [])} mm turns "
            f"{before:,} voxels into {after:,} ({after / before:.0f}x, about {needed / 1024**3:.1f} GB); "
            "resample or crop the input first, or pass --allow-large (allow_large=True) to run it anyway"
        )
    limit = memory_budget_gb * 1024**3 if memory_budget_gb is not None else physical_memory()
    if limit is not None and needed > limit:
        what = f"the memory budget of {memory_budget_gb} GB" if memory_budget_gb else "this machine's memory"
        raise InputError(
            f"{source}: {after:,} voxels in network space need about {needed / 1024**3:.1f} GB, "
            f"above {what}; crop the input to the region of interest, or pass --allow-large "
            "(allow_large=True)"
        )


def physical_memory() -> float | None:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX (Windows): no limit known
        return None


def check_window(window: Sequence[int], divisor: Sequence[int], source: str) -> None:
    """A window must span at least two divisor blocks per axis; one block has no context to blend."""
    small = [(w, d) for w, d in zip(window, divisor, strict=True) if d > 1 and w < 2 * d]
    if small:
        minimum = tuple(2 * d if d > 1 else 1 for d in divisor)
        raise InputError(
            f"{source}: window {tuple(window)} (z, y, x) is smaller than twice the model's size divisor "
            f"{tuple(divisor)}; use at least {minimum}"
        )

"""One check that a label (or any second image) lies on its image's voxel grid.

Training and evaluation compare labels voxel by voxel with their images; a label with the right size
but another origin or direction (shifted, flipped) would pass a size-and-spacing check and train on, or
be scored against, the wrong anatomy. Both use this one check so neither can drift from the other.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .errors import InputError

SPACING_RTOL = 1e-4
ORIGIN_TOLERANCE_VOXELS = 1e-3  # NIfTI stores the origin as float32: allow well below a voxel
DIRECTION_ATOL = 1e-4


def grid_differences(image: sitk.Image, other: sitk.Image) -> list[str]:
    """What differs between the two grids (size, spacing, origin, direction); empty when they agree."""
    if image.GetDimension() != other.GetDimension():
        return [f"dimension {other.GetDimension()} vs {image.GetDimension()}"]
    problems = []
    if image.GetSize() != other.GetSize():
        problems.append(f"size {other.GetSize()} vs {image.GetSize()}")
    spacing = np.asarray(image.GetSpacing(), float)
    if not np.allclose(spacing, other.GetSpacing(), rtol=SPACING_RTOL, atol=1e-6):
        problems.append(f"spacing {other.GetSpacing()} vs {image.GetSpacing()}")
    tolerance = ORIGIN_TOLERANCE_VOXELS * float(spacing.max())
    if not np.allclose(image.GetOrigin(), other.GetOrigin(), rtol=0, atol=tolerance):
        problems.append(f"origin {other.GetOrigin()} vs {image.GetOrigin()}")
    if not np.allclose(image.GetDirection(), other.GetDirection(), rtol=0, atol=DIRECTION_ATOL):
        problems.append(f"direction {_rounded(other.GetDirection())} vs {_rounded(image.GetDirection())}")
    return problems


def check_same_grid(
    image: sitk.Image, other: sitk.Image, source: str, what: str = "label", image_name: str = ""
) -> None:
    """Raise one line naming ``source`` and every difference when ``other`` is off ``image``'s grid."""
    problems = grid_differences(image, other)
    if problems:
        named = f" {image_name}" if image_name else ""
        raise InputError(f"{source}: {what} geometry differs from its image{named} ({'; '.join(problems)})")


def _rounded(values) -> tuple[float, ...]:
    return tuple(round(float(v), 4) for v in values)

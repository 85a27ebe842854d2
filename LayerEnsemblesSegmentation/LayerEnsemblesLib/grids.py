"""One check that a label (or any second image) lies on its image's voxel grid, and a grid without voxels.

Training and evaluation compare labels voxel by voxel with their images; a label with the right size
but another origin or direction (shifted, flipped) would pass a size-and-spacing check and train on, or
be scored against, the wrong anatomy. Both use this one check so neither can drift from the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class ImageGrid:
    """An image's voxel grid (size, spacing, origin, direction) without its voxels.

    A review keeps each case's input grid for as long as the case is open, only to resample results onto
    it; an empty SimpleITK image of that size would still hold one byte per voxel (10 MiB for a
    256 x 256 x 160 volume, per case). The getters are SimpleITK's, so grid checks take either.
    """

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image) -> ImageGrid:
        """The grid of a SimpleITK image (or of another ImageGrid)."""
        return cls.from_lists(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    @classmethod
    def from_lists(
        cls,
        size: Sequence[int],
        spacing: Sequence[float],
        origin: Sequence[float],
        direction: Sequence[float],
    ) -> ImageGrid:
        grid = cls(
            tuple(int(v) for v in size),
            tuple(float(v) for v in spacing),
            tuple(float(v) for v in origin),
            tuple(float(v) for v in direction),
        )
        dimension = len(grid.size)
        if (
            min(grid.size, default=0) < 1
            or len(grid.spacing) != dimension
            or len(grid.origin) != dimension
            or len(grid.direction) != dimension * dimension
        ):
            raise ValueError(f"grid size {list(grid.size)} with {len(grid.direction)} direction values")
        return grid

    def GetSize(self) -> tuple[int, ...]:  # noqa: N802 - SimpleITK's name, so grid checks take either
        return self.size

    def GetSpacing(self) -> tuple[float, ...]:  # noqa: N802
        return self.spacing

    def GetOrigin(self) -> tuple[float, ...]:  # noqa: N802
        return self.origin

    def GetDirection(self) -> tuple[float, ...]:  # noqa: N802
        return self.direction

    def GetDimension(self) -> int:  # noqa: N802
        return len(self.size)


def place_on_grid(image: sitk.Image, grid) -> sitk.Image:
    """Give ``image`` the spacing, origin and direction of ``grid`` (a SimpleITK image or an ImageGrid)."""
    image.SetSpacing(grid.GetSpacing())
    image.SetOrigin(grid.GetOrigin())
    image.SetDirection(grid.GetDirection())
    return image


def resample_onto(image: sitk.Image, grid, interpolator: int, default: float = 0.0) -> sitk.Image:
    """``sitk.Resample`` onto a grid given by its geometry alone, keeping the pixel type."""
    return sitk.Resample(
        image,
        list(grid.GetSize()),
        sitk.Transform(),
        interpolator,
        list(grid.GetOrigin()),
        list(grid.GetSpacing()),
        list(grid.GetDirection()),
        default,
        image.GetPixelID(),
    )

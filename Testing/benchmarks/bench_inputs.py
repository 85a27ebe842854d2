"""The benchmark's input sizes and images: a real hippocampus crop where the data is present, else synthetic.

Synthetic volumes are 1 mm noise with a few bright blobs, seeded, so every method (and every child
process) sees the same voxels. Shapes are in array order (z, y, x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPOSITORY = Path(__file__).resolve().parents[2]
HIPPOCAMPUS = REPOSITORY.parent / "shared" / "data" / "Task04_Hippocampus_dev"
HIPPOCAMPUS_FALLBACK_SHAPE = (36, 50, 36)


@dataclass(frozen=True)
class SizeSpec:
    """One benchmarked input size and the sliding window the engine uses for it."""

    name: str
    label: str
    shape: tuple[int, int, int]  # z, y, x (for 2D: slices, y, x)
    window: tuple[int, int, int]
    spatial_dims: int = 3
    real_case: bool = False

    @property
    def voxels(self) -> int:
        return math.prod(self.shape)

    @property
    def megavoxels(self) -> float:
        return self.voxels / 1e6


# The 3D window is the largest "single window" size of the issue, so only 256 x 256 x 160 slides.
WINDOW_3D = (160, 192, 160)
SIZES = {
    "hippocampus": SizeSpec(
        "hippocampus", "hippocampus crop", HIPPOCAMPUS_FALLBACK_SHAPE, WINDOW_3D, real_case=True
    ),
    "128": SizeSpec("128", "3D 128³", (128, 128, 128), WINDOW_3D),
    "160x192x160": SizeSpec("160x192x160", "3D 160×192×160", (160, 192, 160), WINDOW_3D),
    "256x256x160": SizeSpec("256x256x160", "3D 256×256×160 (sliding window)", (160, 256, 256), WINDOW_3D),
    "2d16x512": SizeSpec(
        "2d16x512", "2D 16×512² (slice by slice)", (16, 512, 512), (16, 512, 512), spatial_dims=2
    ),
}
QUICK_SIZES = {
    "hippocampus": SizeSpec(
        "hippocampus", "hippocampus crop", HIPPOCAMPUS_FALLBACK_SHAPE, (48, 64, 48), real_case=True
    ),
    "sliding": SizeSpec("sliding", "3D 32×32×64 (sliding window)", (32, 32, 64), (32, 32, 32)),
    "2d": SizeSpec("2d", "2D 4×64² (slice by slice)", (4, 64, 64), (4, 64, 64), spatial_dims=2),
}


def hippocampus_case() -> Path | None:
    """The first labelled hippocampus image, when the shared data set is present."""
    images = HIPPOCAMPUS / "imagesTr"
    if not images.is_dir():
        return None
    cases = sorted(images.glob("*.nii.gz"))
    return cases[0] if cases else None


def synthetic_image(shape: tuple[int, int, int], seed: int = 0) -> sitk.Image:
    """Noise plus smooth bright blobs, float32, 1 mm isotropic."""
    rng = np.random.default_rng(seed)
    array = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.3)
    axes = np.ogrid[tuple(slice(0, s) for s in shape)]
    for _ in range(4):
        centre = [rng.uniform(0.25, 0.75) * s for s in shape]
        radius = 0.15 * min(shape[1:]) if shape[0] < 32 else 0.15 * min(shape)
        distance2 = sum(((a - c) / radius) ** 2 for a, c in zip(axes, centre, strict=True))
        array += np.exp(-0.5 * distance2).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.0))
    return image


def load_input(size: SizeSpec) -> tuple[sitk.Image, str]:
    """The image for ``size`` and where it came from."""
    if size.real_case:
        case = hippocampus_case()
        if case is not None:
            return sitk.ReadImage(str(case), sitk.sitkFloat32), f"real case {case.name}"
        return synthetic_image(HIPPOCAMPUS_FALLBACK_SHAPE), "synthetic (hippocampus data not found)"
    return synthetic_image(size.shape), "synthetic"


def input_file(size: SizeSpec, folder: Path) -> Path:
    """A NIfTI file of ``size`` for the end-to-end CLI (the real case file itself when present)."""
    if size.real_case:
        case = hippocampus_case()
        if case is not None:
            return case
    path = Path(folder) / f"input_{size.name}.nii.gz"
    if not path.is_file():
        image, _ = load_input(size)
        sitk.WriteImage(image, str(path), useCompression=True)
    return path


def actual_shape(image: sitk.Image) -> tuple[int, int, int]:
    return tuple(int(s) for s in reversed(image.GetSize()))  # type: ignore[return-value]

"""Synthetic acquisition shifts that widen the range of segmentation quality on any dataset.

Uncertainty can only separate good from bad results when there are bad results; on clean
in-distribution cases Dice barely varies and every score correlates weakly (``docs/method.md``). Each
shift imitates an acquisition problem, keeps the image's grid (so the reference labels still apply
voxel for voxel) and has three severities (1 mild, 2 moderate, 3 severe). Randomness (field shape,
noise, the axis or side affected) is drawn from a generator seeded by the seed, the case id, the shift
and the severity, so a run is reproducible case by case and independent of the order of cases.

| shift | what it imitates | severity 1 / 2 / 3 |
|---|---|---|
| ``intensity`` | receiver gain too high, bright end saturated | × 1.5 / 2 / 3, clip at 99th percentile |
| ``bias_field`` | coil inhomogeneity: a smooth multiplicative field | log-amplitude 0.2 / 0.4 / 0.6 |
| ``noise`` | low SNR: Rician noise | σ = 5 / 10 / 20 % of the 99th percentile |
| ``blur`` | motion or a soft reconstruction kernel: Gaussian blur | σ = 0.75 / 1.25 / 2 mm |
| ``low_resolution`` | thick slices along one (random) axis, interpolated back | 2 / 3 / 4 × the spacing |
| ``crop`` | field of view cut short on one (random) side | 15 / 30 / 45 % of an axis set to the minimum |
| ``gamma`` | a different contrast curve | γ = 1.5 / 2 / 3, or its inverse (random) |
| ``ghosting`` | N/2 ghosts along a (random) phase-encoding axis | ghost strength 0.2 / 0.35 / 0.5 |

Pure intensity scaling is not among them: the models normalise intensities (z-score), so it would be
a no-op; ``intensity`` therefore saturates, as a real over-gained acquisition does.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

SEVERITIES = (1, 2, 3)
SEVERITY_PARAMETERS: dict[str, tuple[float, float, float]] = {
    "intensity": (1.5, 2.0, 3.0),
    "bias_field": (0.2, 0.4, 0.6),
    "noise": (0.05, 0.10, 0.20),
    "blur": (0.75, 1.25, 2.0),
    "low_resolution": (2.0, 3.0, 4.0),
    "crop": (0.15, 0.30, 0.45),
    "gamma": (1.5, 2.0, 3.0),
    "ghosting": (0.2, 0.35, 0.5),
}


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(np.float64)


def _like(array: np.ndarray, image: sitk.Image) -> sitk.Image:
    """``array`` with ``image``'s geometry and a float32 pixel type (shifts create non-integer values)."""
    result = sitk.GetImageFromArray(array.astype(np.float32))
    result.CopyInformation(image)
    return result


def _intensity(image: sitk.Image, factor: float, rng: np.random.Generator) -> sitk.Image:
    array = _array(image)
    ceiling = np.percentile(array, 99)
    return _like(np.minimum(array * factor, ceiling) if ceiling > 0 else array * factor, image)


def _bias_field(image: sitk.Image, amplitude: float, rng: np.random.Generator) -> sitk.Image:
    array = _array(image)
    axes = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in array.shape], indexing="ij")
    # a random second-order polynomial in normalised coordinates, scaled to a maximum of 1
    terms = [*axes] + [a * b for i, a in enumerate(axes) for b in axes[i:]]
    field = sum(rng.normal() * term for term in terms)
    field = field / max(float(np.abs(field).max()), 1e-12)
    return _like(array * np.exp(amplitude * field), image)


def _noise(image: sitk.Image, fraction: float, rng: np.random.Generator) -> sitk.Image:
    array = _array(image)
    sigma = fraction * max(float(np.percentile(np.abs(array), 99)), 1e-6)
    real = array + rng.normal(0.0, sigma, array.shape)
    imaginary = rng.normal(0.0, sigma, array.shape)
    return _like(np.sqrt(real**2 + imaginary**2), image)


def _blur(image: sitk.Image, sigma_mm: float, rng: np.random.Generator) -> sitk.Image:
    return sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), sigma_mm)


def _low_resolution(image: sitk.Image, factor: float, rng: np.random.Generator) -> sitk.Image:
    axis = int(rng.integers(3))  # SimpleITK axis order (x, y, z)
    image = sitk.Cast(image, sitk.sitkFloat32)
    spacing = list(image.GetSpacing())
    # a thick slice integrates over its thickness: blur along the axis (FWHM = new thickness) first
    smoothed = sitk.RecursiveGaussian(image, sigma=factor * spacing[axis] / 2.3548, direction=axis)
    coarse_spacing = list(spacing)
    coarse_spacing[axis] = spacing[axis] * factor
    size = list(image.GetSize())
    size[axis] = max(1, int(np.ceil(size[axis] / factor)))
    coarse = sitk.Resample(
        smoothed,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        coarse_spacing,
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )
    return sitk.Resample(
        coarse,
        image,
        sitk.Transform(),
        sitk.sitkLinear,
        0.0,
        sitk.sitkFloat32,
        useNearestNeighborExtrapolator=True,
    )


def _crop(image: sitk.Image, fraction: float, rng: np.random.Generator) -> sitk.Image:
    array = _array(image)
    axis, from_start = int(rng.integers(3)), bool(rng.integers(2))
    width = max(1, int(round(fraction * array.shape[axis])))
    index = [slice(None)] * 3
    index[axis] = slice(0, width) if from_start else slice(array.shape[axis] - width, None)
    array[tuple(index)] = array.min()
    return _like(array, image)


def _gamma(image: sitk.Image, gamma: float, rng: np.random.Generator) -> sitk.Image:
    array = _array(image)
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return _like(array, image)
    exponent = gamma if rng.integers(2) else 1.0 / gamma
    scaled = (array - low) / (high - low)
    return _like(low + (high - low) * scaled**exponent, image)


def _ghosting(image: sitk.Image, strength: float, rng: np.random.Generator) -> sitk.Image:
    array = _array(image)
    axis = int(rng.integers(3))
    spectrum = np.fft.fft(array, axis=axis)
    # scaling every other k-space line creates a copy of the object shifted by half the field of view
    modulation = np.ones(array.shape[axis])
    modulation[1::2] = 1.0 - strength
    shape = [1, 1, 1]
    shape[axis] = -1
    ghosted = np.abs(np.fft.ifft(spectrum * modulation.reshape(shape), axis=axis))
    return _like(ghosted, image)


SHIFTS: dict[str, Callable[[sitk.Image, float, np.random.Generator], sitk.Image]] = {
    "intensity": _intensity,
    "bias_field": _bias_field,
    "noise": _noise,
    "blur": _blur,
    "low_resolution": _low_resolution,
    "crop": _crop,
    "gamma": _gamma,
    "ghosting": _ghosting,
}


def shift_generator(seed: int, case_id: str, shift: str, severity: int) -> np.random.Generator:
    """A generator that depends only on its arguments (crc32, unlike ``hash``, is stable across runs)."""
    return np.random.default_rng(
        [int(seed), zlib.crc32(case_id.encode()), zlib.crc32(shift.encode()), int(severity)]
    )


def apply_shift(image: sitk.Image, shift: str, severity: int, seed: int = 0, case_id: str = "") -> sitk.Image:
    """``image`` degraded by ``shift`` at ``severity`` (1–3), on the same grid, as float32."""
    if shift not in SHIFTS:
        raise InputError(f"shift {shift!r}: unknown; choose from {', '.join(SHIFTS)}")
    if severity not in SEVERITIES:
        raise InputError(f"severity {severity}: must be one of {SEVERITIES}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{case_id or 'image'}: shifts apply to single-channel images only")
    parameter = SEVERITY_PARAMETERS[shift][severity - 1]
    return SHIFTS[shift](image, parameter, shift_generator(seed, case_id, shift, severity))


def parse_shifts(text: str | Sequence[str] | None) -> list[str]:
    """``all``, ``none`` or a comma-separated list of shift names."""
    if text is None:
        return []
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if names in (["none"], []):
        return []
    if names == ["all"]:
        return list(SHIFTS)
    unknown = [n for n in names if n not in SHIFTS]
    if unknown:
        raise InputError(f"--shifts: unknown shift(s) {unknown}; choose from all, none, {', '.join(SHIFTS)}")
    return names


def parse_severities(values: Sequence[int | str] | None) -> list[int]:
    if not values:
        return list(SEVERITIES)
    parsed = sorted({int(v) for item in values for v in str(item).split(",") if v.strip()})
    bad = [v for v in parsed if v not in SEVERITIES]
    if bad:
        raise InputError(f"--severities: {bad} not among {SEVERITIES}")
    return parsed

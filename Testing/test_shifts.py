"""Synthetic shifts: same grid, reproducible, stronger with severity, each doing what it says."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.evaluation import shifts


def _phantom() -> sitk.Image:
    """An ellipsoid on a noisy background, anisotropic and oblique, like a real MRI crop."""
    z, y, x = np.mgrid[:12, :16, :14]
    array = 100.0 + 300.0 * ((((z - 6) / 4) ** 2 + ((y - 8) / 5) ** 2 + ((x - 7) / 4) ** 2) < 1)
    array += 5.0 * x + np.random.default_rng(0).normal(0.0, 10.0, array.shape)
    image = sitk.GetImageFromArray(array.astype(np.int16))
    image.SetSpacing((1.0, 1.2, 1.5))
    image.SetOrigin((-3.0, 4.0, 10.0))
    image.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    return image


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(np.float64)


@pytest.mark.parametrize("name", list(shifts.SHIFTS))
def test_every_shift_keeps_the_grid_is_seeded_and_grows_with_severity(name):
    image = _phantom()
    original = _array(image)
    changes = []
    for severity in shifts.SEVERITIES:
        shifted = shifts.apply_shift(image, name, severity, seed=1, case_id="case_7")
        assert shifted.GetSize() == image.GetSize()
        assert shifted.GetSpacing() == image.GetSpacing()
        assert shifted.GetOrigin() == image.GetOrigin()
        assert shifted.GetDirection() == image.GetDirection()
        again = shifts.apply_shift(image, name, severity, seed=1, case_id="case_7")
        np.testing.assert_array_equal(_array(shifted), _array(again))
        changes.append(np.abs(_array(shifted) - original).mean())
    assert changes[0] > 0
    if name not in ("bias_field", "gamma", "crop", "low_resolution", "ghosting"):  # random side/axis/sign
        assert changes[0] < changes[1] < changes[2]


def test_seed_and_case_change_the_random_draw():
    image = _phantom()
    first = _array(shifts.apply_shift(image, "noise", 2, seed=0, case_id="a"))
    assert not np.array_equal(first, _array(shifts.apply_shift(image, "noise", 2, seed=1, case_id="a")))
    assert not np.array_equal(first, _array(shifts.apply_shift(image, "noise", 2, seed=0, case_id="b")))


def test_crop_blanks_the_stated_fraction_of_one_axis():
    image = _phantom()
    for severity, fraction in zip(shifts.SEVERITIES, shifts.SEVERITY_PARAMETERS["crop"], strict=True):
        cropped = _array(shifts.apply_shift(image, "crop", severity, seed=3, case_id="c"))
        changed = cropped != _array(image)
        # every changed voxel now holds the image minimum, inside one slab at one end of one axis
        assert np.all(cropped[changed] == _array(image).min())
        extents = [np.unique(np.nonzero(changed)[axis]).size / changed.shape[axis] for axis in range(3)]
        assert max(extents) == pytest.approx(1.0)
        assert min(extents) == pytest.approx(fraction, abs=1 / min(changed.shape) + 1e-9)


def test_intensity_saturates_the_bright_end():
    image = _phantom()
    original = _array(image)
    shifted = _array(shifts.apply_shift(image, "intensity", 2, case_id="x"))
    ceiling = np.percentile(original, 99)
    assert shifted.max() == pytest.approx(ceiling, rel=1e-5)
    below = original * 2 < ceiling
    np.testing.assert_allclose(shifted[below], 2 * original[below], rtol=1e-6)  # × 2 below the ceiling
    assert below.mean() > 0.5


def test_blur_and_low_resolution_remove_fine_detail_but_keep_the_mean():
    checker = np.indices((12, 16, 14)).sum(axis=0) % 2 * 100.0 + 50.0
    image = sitk.GetImageFromArray(checker.astype(np.float32))
    for name in ("blur", "low_resolution"):
        result = _array(shifts.apply_shift(image, name, 3, case_id="x"))
        assert result.std() < 0.6 * checker.std()
        assert result.mean() == pytest.approx(checker.mean(), rel=0.05)


def test_low_resolution_acts_along_one_axis():
    # a sum of one pattern per axis: whichever axis is degraded, the others keep their detail exactly
    z, y, x = np.mgrid[:12, :16, :14]
    image = sitk.GetImageFromArray((np.cos(np.pi * x / 2) + np.cos(np.pi * y / 2) + np.cos(np.pi * z / 2))
                                   .astype(np.float32))
    original = _array(image)
    for seed in range(4):
        result = _array(shifts.apply_shift(image, "low_resolution", 3, seed=seed, case_id="x"))
        ratios = sorted(np.abs(np.diff(result, axis=a)).mean() / np.abs(np.diff(original, axis=a)).mean()
                        for a in range(3))
        assert ratios[0] < 0.5
        assert ratios[1] == pytest.approx(1.0, abs=1e-4) and ratios[2] == pytest.approx(1.0, abs=1e-4)


def test_ghosting_adds_a_shifted_copy():
    array = np.zeros((8, 8, 16))
    array[3:5, 3:5, 2:6] = 100.0
    image = sitk.GetImageFromArray(array)
    result = _array(shifts.apply_shift(image, "ghosting", 3, seed=0, case_id="g"))
    ghost = result - array
    assert np.abs(ghost).max() > 10  # a visible copy appears half a field of view away
    assert result.sum() == pytest.approx(array.sum(), rel=0.3)


def test_parse_shifts_and_severities():
    assert shifts.parse_shifts("all") == list(shifts.SHIFTS)
    assert shifts.parse_shifts("none") == []
    assert shifts.parse_shifts("noise, blur") == ["noise", "blur"]
    with pytest.raises(InputError, match="unknown shift"):
        shifts.parse_shifts("noise,sparkle")
    assert shifts.parse_severities(["1,3"]) == [1, 3]
    assert shifts.parse_severities(None) == [1, 2, 3]
    with pytest.raises(InputError):
        shifts.parse_severities(["4"])
    with pytest.raises(InputError, match="unknown"):
        shifts.apply_shift(_phantom(), "sparkle", 1)

"""The engine's limits are where the documentation says: anisotropy ratio 6 and class values 0..255.

Each limit is tried on both sides, so moving it (to 15, or dropping the class-value check) fails here.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_tiny_model
from LayerEnsemblesLib.contract import ClassInfo
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.inference import Predictor
from LayerEnsemblesLib.preprocessing import MAX_ANISOTROPY, check_anisotropy


def image_with_spacing(spacing) -> sitk.Image:
    image = sitk.GetImageFromArray(np.zeros((4, 4, 4), np.float32))
    image.SetSpacing(spacing)
    return image


def test_the_documented_anisotropy_limit_is_six():
    assert MAX_ANISOTROPY == 6.0


@pytest.mark.parametrize(
    "spacing, target, spatial_dims, refused",
    [
        ((1.0, 1.0, 5.9), [1.0, 1.0, 1.0], 3, False),
        ((1.0, 1.0, 6.5), [1.0, 1.0, 1.0], 3, True),
        ((0.5, 0.5, 5.0), [1.0, 1.0, 1.0], 3, True),  # ratio 10: between the limit and 15
        ((0.4, 0.4, 5.6), None, 3, True),  # ratio 14, no target spacing
        ((1.0, 1.0, 14.0), [1.0, 1.0, 3.0], 3, False),  # 14 / 3 is within 6 of the model's own ratio
        ((1.0, 1.0, 20.0), [1.0, 1.0, 3.0], 3, True),  # 20 / 3 is not
        ((1.0, 7.0, 50.0), [1.0, 1.0, 1.0], 2, True),  # in-plane ratio 7 for a 2D model
        ((1.0, 1.0, 50.0), [1.0, 1.0, 1.0], 2, False),  # a 2D model never looks along z
    ],
)
def test_anisotropy_limit_on_both_sides(spacing, target, spatial_dims, refused):
    image = image_with_spacing(spacing)
    if refused:
        with pytest.raises(InputError, match="extreme anisotropy"):
            check_anisotropy(image, "scan.nii.gz", target, spatial_dims)
    else:
        check_anisotropy(image, "scan.nii.gz", target, spatial_dims)


def classes_with(values):
    return [ClassInfo(f"class{v}" if v else "background", v, [100, 100, 100]) for v in values]


@pytest.mark.parametrize("values", [[0, 1, 256], [0, 300, 2], [0, -1, 2], [0, 1, 70000]])
def test_class_values_outside_0_to_255_are_refused(tmp_path, values):
    with pytest.raises(InputError, match=r"0\.\.255"):  # at export (the contract) or at load at the latest
        Predictor(make_tiny_model(tmp_path / "model.pt", classes=classes_with(values)), device="cpu")


def test_class_value_255_is_accepted_and_written_as_255(tmp_path):
    model = make_tiny_model(tmp_path / "model.pt", classes=classes_with([0, 7, 255]))
    predictor = Predictor(model, device="cpu")
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32))
    segmentation = sitk.GetArrayFromImage(predictor.predict(image).segmentation)
    assert set(np.unique(segmentation)) <= {0, 7, 255}
    assert segmentation.dtype == np.uint8

"""Outputs come back on the input's exact grid, and a structure lands where it physically is.

The intensity model segments a bright sphere wherever it is, so for oblique, anisotropic and flipped
inputs the segmentation must cover the sphere's physical position, whatever the model's own
orientation and spacing were.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from engine_models import export_intensity_model, physical_points, rotation, sphere_image
from LayerEnsemblesLib.inference import Predictor

CENTRE_MM = (12.0, -4.0, 20.0)
CASES = {
    "axial": dict(spacing=(1.0, 1.0, 1.0), direction=np.eye(3)),
    "oblique": dict(spacing=(1.0, 1.0, 1.0), direction=rotation("z", 30) @ rotation("x", 20)),
    "anisotropic": dict(spacing=(0.7, 0.9, 1.6), direction=np.eye(3)),
    "flipped": dict(spacing=(1.0, 1.0, 1.0), direction=np.diag([-1.0, 1.0, 1.0])),
    "oblique_anisotropic_flipped": dict(
        spacing=(0.8, 1.1, 1.5), direction=rotation("y", 25) @ np.diag([1.0, -1.0, -1.0])
    ),
}


@pytest.fixture(scope="module", params=[None, "RAS"], ids=["native-axes", "reoriented-RAS"])
def predictor(request, tmp_path_factory):
    path = export_intensity_model(
        tmp_path_factory.mktemp("models") / f"geometry-{request.param}.pt", orientation=request.param
    )
    return Predictor(path, device="cpu", window_size=(64, 64, 64))


def centred_sphere(spacing, direction):
    """A 40 mm box around CENTRE_MM on the requested grid, with a 7 mm sphere at CENTRE_MM."""
    size = [int(round(40 / s)) for s in spacing]
    half = np.asarray(direction) @ ((np.asarray(size) - 1) * np.asarray(spacing) / 2)
    origin = np.asarray(CENTRE_MM) - half
    return sphere_image(size=size, spacing=spacing, direction=direction, origin=origin, centre_mm=CENTRE_MM)


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_match_the_input_grid_and_the_sphere(predictor, case):
    image, mask = centred_sphere(**CASES[case])
    prediction = predictor.predict(image, maps=("agreement", "entropy"))
    for output in [prediction.segmentation, *prediction.maps.values(), prediction.probabilities]:
        assert output.GetSize() == image.GetSize()
        assert np.allclose(output.GetSpacing(), image.GetSpacing())
        assert np.allclose(output.GetOrigin(), image.GetOrigin(), atol=1e-6)
        assert np.allclose(output.GetDirection(), image.GetDirection(), atol=1e-9)
    segmentation = sitk.GetArrayFromImage(prediction.segmentation) > 0
    dice = 2 * (segmentation & mask).sum() / (segmentation.sum() + mask.sum())
    assert dice > 0.9, f"{case}: Dice {dice:.3f} between the segmentation and the true sphere"
    points = physical_points(image)
    centroid = points[segmentation].mean(0)
    assert np.linalg.norm(centroid - np.asarray(CENTRE_MM)) < 0.75, f"{case}: centroid {centroid}"


def test_flipping_the_axes_does_not_move_the_result(predictor):
    reference, _ = centred_sphere(**CASES["axial"])
    flipped = sitk.Flip(reference, [True, False, True])  # same physical image, reversed voxel order
    first = sitk.GetArrayFromImage(predictor.predict(reference).segmentation)
    second = predictor.predict(flipped).segmentation
    back = sitk.GetArrayFromImage(sitk.Flip(second, [True, False, True]))
    assert (first == back).mean() > 0.999

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


@pytest.mark.parametrize("is_label", [False, True])
def test_results_go_onto_a_grid_without_voxels_exactly_as_onto_the_image(is_label):
    """The review keeps each open case's input grid as an ImageGrid (no voxel buffer): resampling onto it
    must give the very voxels and geometry that resampling onto the input image gives."""
    from LayerEnsemblesLib.grids import ImageGrid
    from LayerEnsemblesLib.preprocessing import NetworkGeometry, to_input_space
    from LayerEnsemblesLib.scene.geometry import geometry_only

    image, _ = sphere_image(size=(33, 29, 21), spacing=(0.7, 0.9, 2.5), origin=(4.0, -7.5, 12.0),
                            direction=rotation("z", 25.0).flatten())  # fmt: skip
    network = sitk.Resample(image, [24, 27, 53], sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                            [1.0, 1.0, 1.0], image.GetDirection())  # fmt: skip
    rng = np.random.default_rng(3)
    values = rng.integers(0, 3, (53, 27, 24)) if is_label else rng.random((53, 27, 24))
    array = np.pad(values.astype(np.uint8 if is_label else np.float32), [(1, 2), (0, 1), (2, 0)])
    geometry = NetworkGeometry(network, [(1, 2), (0, 1), (2, 0)], array.shape)
    grid = geometry_only(image)
    assert isinstance(grid, ImageGrid) and grid == ImageGrid.of(grid)  # nothing but the geometry is kept
    on_image = to_input_space(array, geometry, image, is_label)
    on_grid = to_input_space(array, geometry, grid, is_label)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(on_grid), sitk.GetArrayViewFromImage(on_image))
    assert on_grid.GetPixelID() == on_image.GetPixelID()
    for getter in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(on_grid, getter)() == getattr(on_image, getter)() == getattr(grid, getter)()
    # the same grid needs no resampling: the array is placed on it as it is
    same = NetworkGeometry(image, [(0, 0)] * 3, tuple(reversed(image.GetSize())))
    placed = to_input_space(sitk.GetArrayFromImage(image), same, grid, is_label=False)
    assert placed.GetOrigin() == image.GetOrigin() and placed.GetDirection() == image.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(placed), sitk.GetArrayViewFromImage(image))

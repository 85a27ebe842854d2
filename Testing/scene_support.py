"""Shared helpers for the scene-logic tests (slicer-core): synthetic inputs and a real tiny predictor."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

OBLIQUE = sitk.VersorTransform((0.0, 0.0, 1.0), 0.3).GetMatrix()  # 0.3 rad about z: direction is not identity


def blob_image(shape=(20, 24, 28), spacing=(1.0, 1.2, 1.5), origin=(10.0, -20.0, 30.0),
               direction=OBLIQUE, seed: int = 0) -> sitk.Image:
    """A bright ellipsoid on noise, with non-trivial spacing, origin and direction (z, y, x array order)."""
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    centre = np.array(shape) / 2.0
    radius2 = ((z - centre[0]) / 4.0) ** 2 + ((y - centre[1]) / 5.0) ** 2 + ((x - centre[2]) / 6.0) ** 2
    blob = np.exp(-radius2)
    noise = np.random.default_rng(seed).normal(0.0, 0.05, shape)
    image = sitk.GetImageFromArray((100.0 * blob + noise).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def ras_to_ijk(volume_node, ras) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(matrix)
    return np.array(matrix.MultiplyPoint([*ras, 1.0])[:3])


@pytest.fixture(scope="module")
def predictor(tiny_model_file):
    from LayerEnsemblesLib.inference import Predictor

    # One window covers these small volumes; the tiny model's 16³ training patch would need ~100 windows.
    return Predictor(tiny_model_file, device="cpu", window_size=(64, 64, 64))

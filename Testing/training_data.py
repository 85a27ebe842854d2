"""Synthetic training data written as real NIfTI files: bright blobs labelled 1 and 2 in noise.

Blob 1 is dimmer than blob 2, so a network must use intensity (not only "bright vs dark") to tell the
classes apart; both are easy enough that a tiny network learns them in a few dozen steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

CLASS_NAMES = {"0": "background", "1": "dim blob", "2": "bright blob"}


def blob_case(shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image [z, y, x] float32 and its label uint8 with one dim and one bright ball."""
    label = np.zeros(shape, np.uint8)
    zz, yy, xx = np.indices(shape)
    for value in (1, 2):
        centre = [rng.integers(5, s - 5) for s in shape]
        radius = rng.uniform(3.0, 4.5)
        label[(zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 < radius**2] = value
    image = rng.normal(0.0, 1.0, shape).astype(np.float32) + 2.5 * (label == 1) + 5.0 * (label == 2)
    return image, label


def to_image(array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def write_blob_dataset(
    root: Path,
    cases: int = 8,
    shape: tuple[int, int, int] = (20, 24, 24),
    seed: int = 0,
    suffix: str = ".nii.gz",
) -> Path:
    """An MSD-style folder (dataset.json, imagesTr, labelsTr); returns the dataset.json path."""
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    training = []
    for index in range(cases):
        image, label = blob_case(shape, rng)
        name = f"blob_{index:03d}{suffix}"
        sitk.WriteImage(to_image(image), str(root / "imagesTr" / name))
        sitk.WriteImage(to_image(label), str(root / "labelsTr" / name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    document = {"name": "blobs", "licence": "CC0", "labels": CLASS_NAMES, "training": training}
    (root / "dataset.json").write_text(json.dumps(document, indent=1))
    return root / "dataset.json"


def tiny_config(dataset: Path, out: Path, **overrides):
    """A training configuration small enough for a unit test (seconds on one CPU core)."""
    from LayerEnsemblesLib.training import TrainConfig

    fields = dict(
        dataset=str(dataset),
        out=str(out),
        depth=3,
        base_channels=4,
        epochs=2,
        batch_size=2,
        iterations_per_epoch=2,
        lr=3e-3,
        validation_fraction=0.25,
        threads=1,
    )
    fields.update(overrides)
    return TrainConfig(**fields)

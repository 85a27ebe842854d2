"""A small labelled dataset written to disk (MSD layout): ellipsoids split into two structures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def write_synthetic_dataset(folder: Path, count: int = 4, shape: tuple[int, int, int] = (20, 24, 22)) -> Path:
    """``count`` cases with labels 0/1/2, slightly different sizes and intensities; returns dataset.json."""
    rng = np.random.default_rng(0)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    entries = []
    for index in range(count):
        z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
        radius = 4.5 + 0.5 * index
        inside = ((z - shape[0] / 2) / radius) ** 2 + ((y - shape[1] / 2) / (radius + 1)) ** 2 + (
            (x - shape[2] / 2) / radius
        ) ** 2 < 1
        label = np.zeros(shape, np.uint8)
        label[inside & (x < shape[2] / 2)] = 1
        label[inside & (x >= shape[2] / 2)] = 2
        image = 100.0 + 150.0 * inside + 30.0 * (label == 2) + rng.normal(0.0, 8.0, shape)
        name = f"case_{index:03d}.nii.gz"
        for array, subfolder in ((image.astype(np.float32), "imagesTr"), (label, "labelsTr")):
            volume = sitk.GetImageFromArray(array)
            volume.SetSpacing((1.0, 1.0, 1.0))
            sitk.WriteImage(volume, str(folder / subfolder / name))
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    dataset = {
        "name": "synthetic",
        "labels": {"0": "background", "1": "structure1", "2": "structure2"},
        "training": entries,
    }
    path = folder / "dataset.json"
    path.write_text(json.dumps(dataset, indent=1), encoding="utf-8")
    return path

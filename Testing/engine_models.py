"""Small real models and images for the inference tests, exported through the real model contract.

``IntensityHeads`` is a transparent "network": each head thresholds the input intensity, averaged over
the head's stride, with a per-head threshold offset. Its answer is known in advance (a bright sphere
is segmented where it is), so tests can check geometry, sliding windows and AULA against the truth,
not against the engine's own output. It is a plain ``nn.Module`` exported with ``export_model``, so
the engine loads a genuine TorchScript archive.
"""

from __future__ import annotations

import locale
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from LayerEnsemblesLib.contract import ModelMetadata, default_classes, export_model
from torch import nn


class IntensityHeads(nn.Module):
    """Head h predicts class k where the pooled intensity exceeds ``thresholds[k-1] + offsets[h]``."""

    def __init__(
        self,
        strides: list[int],
        offsets: list[float],
        thresholds: list[float],
        spatial_dims: int = 3,
        gain: float = 4.0,
        oom_above_voxels: int = 0,
        dropout: float = 0.0,
        oom_above_value: float = 0.0,
    ) -> None:
        super().__init__()
        self.strides = strides
        self.offsets = offsets
        self.thresholds = thresholds
        self.spatial_dims = spatial_dims
        self.gain = gain
        self.oom_above_voxels = oom_above_voxels
        self.oom_above_value = oom_above_value
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.oom_above_voxels > 0 and x.numel() > self.oom_above_voxels:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB (simulated by a test model)")
        if self.oom_above_value > 0 and bool(x.max() > self.oom_above_value):
            raise RuntimeError(
                "out of memory (simulated by a test model for any window with a sentinel voxel)"
            )
        x = self.dropout(x)
        outputs: list[torch.Tensor] = []
        for index, stride in enumerate(self.strides):
            pooled = x
            if stride > 1:
                if self.spatial_dims == 3:
                    pooled = F.avg_pool3d(x, stride)
                else:
                    pooled = F.avg_pool2d(x, stride)
            channel = pooled[:, :1]
            logits = [torch.zeros_like(channel)]
            running = torch.zeros_like(channel)
            for threshold in self.thresholds:
                running = running + self.gain * (channel - threshold - self.offsets[index])
                logits.append(running)
            outputs.append(torch.cat(logits, dim=1))
        return outputs


def export_intensity_model(
    path: Path,
    strides: list[int] | None = None,
    offsets: list[float] | None = None,
    thresholds: list[float] | None = None,
    spatial_dims: int = 3,
    kind: str = "layer_ensemble",
    oom_above_voxels: int = 0,
    dropout: float = 0.0,
    oom_above_value: float = 0.0,
    **metadata_fields,
) -> Path:
    strides = strides or [1, 2, 4, 2, 1]
    offsets = offsets if offsets is not None else [0.0] * len(strides)
    thresholds = thresholds or [0.5]
    model = IntensityHeads(
        strides,
        offsets,
        thresholds,
        spatial_dims,
        oom_above_voxels=oom_above_voxels,
        dropout=dropout,
        oom_above_value=oom_above_value,
    )
    names = ["background"] + [f"class{i}" for i in range(1, len(thresholds) + 1)]
    fields = dict(
        spatial_dims=spatial_dims,
        in_channels=1,
        classes=default_classes(names),
        head_names=[f"head{i}" for i in range(len(strides))],
        head_strides=strides,
        patch_size=[16] * spatial_dims,
        size_divisor=[max(strides)] * spatial_dims,
        target_spacing=[1.0, 1.0, 1.0],
        normalization={"method": "none"},
        name="intensity-test-model",
        kind=kind,
    )
    if kind == "deep_ensemble":
        fields["members"] = len(strides)
    fields.update(metadata_fields)
    return export_model(model, ModelMetadata(**fields), path, overwrite=True)


def sphere_image(
    size=(40, 36, 32),
    spacing=(1.0, 1.0, 1.0),
    direction=None,
    origin=(0.0, 0.0, 0.0),
    centre_mm=None,
    radius_mm=7.0,
    value=1.0,
    seed: int = 0,
    noise: float = 0.05,
) -> tuple[sitk.Image, np.ndarray]:
    """A volume (size x, y, z) with a bright sphere at a physical centre; returns it and the sphere mask."""
    image = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    if direction is not None:
        image.SetDirection([float(d) for d in np.asarray(direction).ravel()])
    if centre_mm is None:
        centre_index = [(s - 1) / 2.0 for s in size]
        centre_mm = image.TransformContinuousIndexToPhysicalPoint(centre_index)
    points = physical_points(image)
    distance = np.linalg.norm(points - np.asarray(centre_mm), axis=-1)
    mask = distance <= radius_mm
    rng = np.random.default_rng(seed)
    array = (value * mask + noise * rng.standard_normal(mask.shape)).astype(np.float32)
    result = sitk.GetImageFromArray(array)
    result.CopyInformation(image)
    return result, mask


def physical_points(image: sitk.Image) -> np.ndarray:
    """Physical coordinates (x, y, z) of every voxel, as an array shaped like the image array (z, y, x, 3)."""
    size = image.GetSize()
    k, j, i = np.meshgrid(np.arange(size[2]), np.arange(size[1]), np.arange(size[0]), indexing="ij")
    index = np.stack([i, j, k], axis=-1).astype(float)
    spacing = np.asarray(image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return np.asarray(image.GetOrigin()) + (index * spacing) @ direction.T


def rotation(axis: str, degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    c, s = np.cos(angle), np.sin(angle)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def oblique_volume(seed: int = 0, size_zyx=(22, 26, 30), spacing=(0.9, 1.0, 1.2)) -> sitk.Image:
    """Noise with a bright block, anisotropic, rotated and off-origin: outputs are resampled back onto it."""
    rng = np.random.default_rng(seed)
    array = rng.normal(size=size_zyx).astype(np.float32)
    array[6:16, 8:20, 9:22] += 2.5
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-20.0, 31.5, 7.25))
    image.SetDirection(tuple((rotation("z", 15) @ rotation("x", -10)).ravel()))
    return image


def write_dicom_series(folder: Path, array: np.ndarray, series_uid: str, spacing=(1.0, 1.0, 2.0)) -> None:
    """Write a (z, y, x) int16 volume as one DICOM series, one file per slice, with the tags readers need."""
    folder.mkdir(parents=True, exist_ok=True)
    # GDCM's writer switches the whole process to the C locale (ASCII text I/O for every later test)
    saved_locale = locale.setlocale(locale.LC_ALL)
    try:
        _write_dicom_slices(folder, array, series_uid, spacing)
    finally:
        locale.setlocale(locale.LC_ALL, saved_locale)


def _write_dicom_slices(folder: Path, array: np.ndarray, series_uid: str, spacing) -> None:
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for index in range(array.shape[0]):
        slice_image = sitk.GetImageFromArray(array[index].astype(np.int16))
        slice_image.SetSpacing(spacing[:2])
        position = (0.0, 0.0, index * spacing[2])
        tags = {
            "0008|0060": "MR",
            "0010|0010": "Test^Patient",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0020|0013": str(index + 1),
            "0020|0032": "\\".join(f"{p:.4f}" for p in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{spacing[1]:.4f}\\{spacing[0]:.4f}",
            "0018|0050": f"{spacing[2]:.4f}",
            "0008|0018": f"{series_uid}.{index + 1}",
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid.split('.')[-1]}_{index:03d}.dcm"))
        writer.Execute(slice_image)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]

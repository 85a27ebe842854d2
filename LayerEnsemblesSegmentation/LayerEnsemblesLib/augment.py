"""Data augmentation in torch, on whole batches, on the training device.

Running on the batch tensor keeps augmentation on the GPU when there is one and needs no extra
library. Spatial transforms move image and label together (labels with nearest-neighbour sampling,
so no new label values appear); intensity transforms touch the image only. Random draws come from
an explicit generator so a seeded run is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentationSettings:
    """Probabilities are per sample. ``flip_axes`` are spatial axes of the patch (array order)."""

    flip_probability: float = 0.5
    flip_axes: Sequence[int] | None = None  # None: every spatial axis
    affine_probability: float = 0.3
    rotation_degrees: float = 15.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    intensity_probability: float = 0.3
    intensity_scale_range: tuple[float, float] = (0.9, 1.1)
    intensity_shift: float = 0.1
    gamma_probability: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise_probability: float = 0.15
    noise_std: float = 0.1


class Augmenter:
    def __init__(self, settings: AugmentationSettings | None = None) -> None:
        self.settings = settings or AugmentationSettings()

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` [B, C, *spatial] float, ``label`` [B, *spatial] int64 -> augmented copies."""
        image, label = flip(image, label, self.settings.flip_probability, self.settings.flip_axes, generator)
        image, label = random_affine(
            image,
            label,
            self.settings.affine_probability,
            self.settings.rotation_degrees,
            self.settings.scale_range,
            generator,
        )
        image = intensity_scale_shift(
            image,
            self.settings.intensity_probability,
            self.settings.intensity_scale_range,
            self.settings.intensity_shift,
            generator,
        )
        image = gamma(image, self.settings.gamma_probability, self.settings.gamma_range, generator)
        image = gaussian_noise(image, self.settings.noise_probability, self.settings.noise_std, generator)
        return image, label


def _uniform(count: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator)


def _chosen(count: int, probability: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(count, generator=generator) < probability


def flip(
    image: torch.Tensor,
    label: torch.Tensor,
    probability: float,
    axes: Sequence[int] | None,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    spatial_dims = label.dim() - 1
    axes = range(spatial_dims) if axes is None else [a for a in axes if a < spatial_dims]
    image, label = image.clone(), label.clone()
    for axis in axes:
        for sample in torch.nonzero(_chosen(len(image), probability, generator)).flatten().tolist():
            image[sample] = image[sample].flip(axis + 1)
            label[sample] = label[sample].flip(axis)
    return image, label


def _rotation(spatial_dims: int, max_radians: float, generator: torch.Generator) -> torch.Tensor:
    if spatial_dims == 2:
        angle = float(_uniform(1, -max_radians, max_radians, generator))
        c, s = math.cos(angle), math.sin(angle)
        return torch.tensor([[c, -s], [s, c]])
    rotation = torch.eye(3)
    for axis in range(3):
        angle = float(_uniform(1, -max_radians, max_radians, generator))
        c, s = math.cos(angle), math.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        step = torch.eye(3)
        step[i, i], step[i, j], step[j, i], step[j, j] = c, -s, s, c
        rotation = step @ rotation
    return rotation


def random_affine(
    image: torch.Tensor,
    label: torch.Tensor,
    probability: float,
    rotation_degrees: float,
    scale_range: tuple[float, float],
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Small rotation and isotropic scaling about the patch centre, in voxel units.

    ``affine_grid`` works in normalised coordinates, where a non-cubic patch would turn a rotation
    into a shear; conjugating with the half-sizes keeps the transform rigid in voxels.
    """
    chosen = torch.nonzero(_chosen(len(image), probability, generator)).flatten().tolist()
    if not chosen:
        return image, label
    spatial_dims = label.dim() - 1
    half = torch.tensor(list(reversed(label.shape[1:])), dtype=torch.float32) / 2  # grid order is (x, y[, z])
    thetas = []
    for _ in chosen:
        rotation = _rotation(spatial_dims, math.radians(rotation_degrees), generator)
        scale = float(_uniform(1, *scale_range, generator))
        matrix = torch.diag(1 / half) @ (rotation / scale) @ torch.diag(half)
        thetas.append(torch.cat([matrix, torch.zeros(spatial_dims, 1)], dim=1))
    theta = torch.stack(thetas).to(image.device, image.dtype)
    selected_image, selected_label = image[chosen], label[chosen]
    grid = F.affine_grid(theta, list(selected_image.shape), align_corners=False)
    warped_image = F.grid_sample(
        selected_image, grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    warped_label = (
        F.grid_sample(
            selected_label[:, None].to(image.dtype),
            grid,
            mode="nearest",
            padding_mode="zeros",
            align_corners=False,
        )[:, 0]
        .round()
        .to(label.dtype)
    )
    image, label = image.clone(), label.clone()
    image[chosen], label[chosen] = warped_image, warped_label
    return image, label


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))


def intensity_scale_shift(
    image: torch.Tensor,
    probability: float,
    scale_range: tuple[float, float],
    shift: float,
    generator: torch.Generator,
) -> torch.Tensor:
    count = len(image)
    chosen = _chosen(count, probability, generator)
    scale = torch.where(chosen, _uniform(count, *scale_range, generator), torch.ones(count))
    offset = torch.where(chosen, _uniform(count, -shift, shift, generator), torch.zeros(count))
    return image * _per_sample(scale, image) + _per_sample(offset, image)


def gamma(
    image: torch.Tensor, probability: float, gamma_range: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """Gamma on the sample's intensities rescaled to [0, 1], then mapped back to their range."""
    count = len(image)
    chosen = _chosen(count, probability, generator)
    # draw below/above 1 with equal chance so brightening and darkening are equally likely
    low, high = gamma_range
    below = _uniform(count, low, 1.0, generator)
    above = _uniform(count, 1.0, high, generator)
    values = torch.where(torch.rand(count, generator=generator) < 0.5, below, above)
    values = torch.where(chosen, values, torch.ones(count))
    if not bool(chosen.any()):
        return image
    flat = image.flatten(1)
    minimum = _per_sample(flat.min(dim=1).values.cpu(), image)
    span = _per_sample((flat.max(dim=1).values - flat.min(dim=1).values).clamp_min(1e-6).cpu(), image)
    unit = ((image - minimum) / span).clamp(0, 1)
    return unit.pow(_per_sample(values, image)) * span + minimum


def gaussian_noise(
    image: torch.Tensor, probability: float, std: float, generator: torch.Generator
) -> torch.Tensor:
    count = len(image)
    chosen = _chosen(count, probability, generator)
    if not bool(chosen.any()):
        return image
    sigma = torch.where(chosen, _uniform(count, 0.0, std, generator), torch.zeros(count))
    # the noise itself is drawn on the image's device, from a generator seeded by ours
    device_generator = torch.Generator(device=image.device)
    device_generator.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    noise = torch.randn(image.shape, generator=device_generator, device=image.device, dtype=image.dtype)
    return image + noise * _per_sample(sigma, image)

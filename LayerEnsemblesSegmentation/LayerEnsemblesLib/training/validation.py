"""Validation during training: every head's Dice and the layer ensemble's Dice on held-out cases.

The ensemble is the mean softmax over the kept heads (all but the first ``skip_heads``), the same
rule the inference engine applies. Dice is computed per foreground class on the unpadded
network-space grid, averaged over cases, then over classes; a class absent from both the
reference and the prediction scores 1 (nothing to find, nothing found).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from ..data import PreparedCase
from ..networks import upsample_logits

WHOLE_VOLUME_FACTOR = 4  # volumes up to this many patches are run in one pass instead of tiles
MAX_VALIDATION_VALUES = 300_000_000  # per-head probabilities held at once (1.2 GB of float32)


def _window_starts(size: int, window: int) -> list[int]:
    if size <= window:
        return [0]
    count = math.ceil((size - window) / (window / 2)) + 1  # half-window overlap
    return sorted({round(i * (size - window) / (count - 1)) for i in range(count)})


@torch.no_grad()
def predict_head_probabilities(
    model: nn.Module,
    image: np.ndarray,
    spatial_dims: int,
    patch_size: Sequence[int],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    slice_batch: int = 16,
) -> torch.Tensor:
    """Softmax of every head at full resolution for one network-space volume: [H, K, z, y, x] on the CPU.

    3D volumes up to a few patches run whole; larger ones are tiled with half-window overlap and
    averaged. A 2D model runs on batches of axial slices. Fine for validation-sized volumes; the
    inference engine streams over heads for large ones.
    """
    volume = torch.from_numpy(image)
    if spatial_dims == 2:
        inputs = volume.permute(1, 0, 2, 3)  # slices as the batch: [z, C, y, x]
        window = list(patch_size)
        chunks = [inputs[i : i + slice_batch] for i in range(0, len(inputs), slice_batch)]
    else:
        inputs = volume[None]
        window = list(patch_size)
        chunks = [inputs]
    spatial = list(inputs.shape[2:])
    if math.prod(spatial) <= WHOLE_VOLUME_FACTOR * math.prod(window):
        window = spatial
    window = [min(w, s) for w, s in zip(window, spatial, strict=False)]
    starts = [_window_starts(s, w) for s, w in zip(spatial, window, strict=False)]
    outputs = []
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    for chunk in chunks:
        total: torch.Tensor | None = None
        counts = torch.zeros(spatial)
        for corner in itertools.product(*starts):
            region = tuple(slice(c, c + w) for c, w in zip(corner, window, strict=False))
            with autocast:
                heads = model(chunk[(slice(None), slice(None), *region)].to(device))
            probabilities = torch.stack(
                [torch.softmax(upsample_logits(h.float(), window), dim=1) for h in heads]
            )
            if total is None:
                total = torch.zeros(probabilities.shape[:3] + tuple(spatial))
            total[(slice(None), slice(None), slice(None), *region)] += probabilities.cpu()
            counts[region] += 1
        outputs.append(total / counts)
    probabilities = torch.cat(outputs, dim=1)  # [H, B, K, *spatial]
    if spatial_dims == 2:
        return probabilities.permute(0, 2, 1, 3, 4).contiguous()  # [H, K, z, y, x]
    return probabilities[:, 0]


def _head_count(model: nn.Module) -> int:
    heads = getattr(model, "heads", None)
    return len(heads) if heads is not None else 10


def validation_crop(
    case: PreparedCase,
    spatial_dims: int,
    patch_size: Sequence[int],
    maps: int,
    budget: int = MAX_VALIDATION_VALUES,
) -> PreparedCase:
    """The case itself, or for volumes too large to hold every head's probabilities, a crop around its
    foreground: whole multiples of the patch (so the network's size divisor still holds), centred on
    the foreground's bounding box. Validation Dice on such volumes is then measured inside that crop.
    """
    shape = case.label.shape
    if maps * math.prod(shape) <= budget:
        return case
    window = list(patch_size) if spatial_dims == 3 else [1, *patch_size]
    size = list(shape)
    while maps * math.prod(size) > budget and any(s > w for s, w in zip(size, window, strict=True)):
        axis = max((a for a in range(3) if size[a] > window[a]), key=lambda a: size[a] / window[a])
        size[axis] = max(window[axis], (math.ceil(size[axis] / window[axis]) - 1) * window[axis])
    points = np.argwhere(case.label > 0)
    centre = (points.min(0) + points.max(0)) // 2 if len(points) else np.asarray(shape) // 2
    starts = [int(np.clip(c - n // 2, 0, s - n)) for c, n, s in zip(centre, size, shape, strict=True)]
    region = tuple(slice(a, a + n) for a, n in zip(starts, size, strict=True))
    padding = [
        (max(0, before - a), max(0, (a + n) - (s - after)))
        for (before, after), a, n, s in zip(case.padding, starts, size, shape, strict=True)
    ]
    return PreparedCase(
        case.case_id,
        np.ascontiguousarray(case.image[(slice(None), *region)]),
        np.ascontiguousarray(case.label[region]),
        padding,
    )


def dice_per_class(prediction: np.ndarray, reference: np.ndarray, num_classes: int) -> list[float]:
    scores = []
    for index in range(1, num_classes):
        predicted, expected = prediction == index, reference == index
        denominator = int(predicted.sum()) + int(expected.sum())
        scores.append(1.0 if denominator == 0 else 2.0 * int((predicted & expected).sum()) / denominator)
    return scores


def validate(
    model: nn.Module,
    cases: Sequence[PreparedCase],
    spatial_dims: int,
    patch_size: Sequence[int],
    class_names: Sequence[str],
    skip_heads: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> dict:
    """Per-head and ensemble Dice over ``cases``, plus the ensemble's Dice for every choice of skip."""
    was_training = model.training
    model.eval()
    head_scores, ensemble_scores, skip_scores = [], [], []
    try:
        for case in cases:
            case = validation_crop(case, spatial_dims, patch_size, len(class_names) * _head_count(model))
            probabilities = predict_head_probabilities(
                model, case.image, spatial_dims, patch_size, device, amp_dtype
            )
            probabilities = case.unpadded(probabilities)
            reference = case.unpadded(case.label)
            num_heads, num_classes = probabilities.shape[:2]
            head_scores.append(
                [dice_per_class(p.argmax(0).numpy(), reference, num_classes) for p in probabilities]
            )
            # mean softmax over heads skip..H-1 for every skip, from a running sum over the deepest heads
            running = torch.zeros_like(probabilities[0])
            by_skip = [None] * num_heads
            for skip in reversed(range(num_heads)):
                running += probabilities[skip]
                by_skip[skip] = dice_per_class(running.argmax(0).numpy(), reference, num_classes)
            skip_scores.append(by_skip)
            ensemble_scores.append(by_skip[skip_heads])
    finally:
        model.train(was_training)
    heads = np.asarray(head_scores)  # [cases, H, classes]
    ensemble = np.asarray(ensemble_scores)  # [cases, classes]
    foreground = list(class_names[1:])
    return {
        "cases": len(cases),
        "skip_heads": skip_heads,
        "ensemble_dice": float(ensemble.mean()),
        "ensemble_dice_per_class": {
            name: float(v) for name, v in zip(foreground, ensemble.mean(axis=0), strict=False)
        },
        "head_dice": [float(v) for v in heads.mean(axis=(0, 2))],
        "head_dice_per_class": {
            name: [float(v) for v in heads[:, :, i].mean(axis=0)] for i, name in enumerate(foreground)
        },
        "ensemble_dice_by_skip": [float(v) for v in np.asarray(skip_scores).mean(axis=(0, 2))],
    }

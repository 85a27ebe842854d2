"""Validation during training: every head's Dice and the layer ensemble's Dice on held-out cases.

The ensemble is the mean softmax over the kept heads (all but the first ``skip_heads``), the same
rule the inference engine applies, on the engine's own sliding windows. Dice (the evaluation's one
implementation) is computed per foreground class on the unpadded network-space grid, averaged over
cases, then over classes; a class absent from both the reference and the prediction scores 1
(nothing to find, nothing found).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from ..data import PreparedCase
from ..evaluation.metrics import dice
from ..inference.sliding_window import plan_windows, run_windows
from ..networks import upsample_logits

MAX_VALIDATION_VALUES = 300_000_000  # per-head probabilities held at once (1.2 GB of float32)
VALIDATION_OVERLAP = 0.5  # the engine's default overlap (Predictor, `segment --overlap`)
SLICE_BATCH = 16  # 2D models: axial slices per forward pass, as the engine's default


@torch.no_grad()
def predict_head_probabilities(
    model: nn.Module,
    image: np.ndarray,
    spatial_dims: int,
    patch_size: Sequence[int],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    slice_batch: int = SLICE_BATCH,
) -> torch.Tensor:
    """Softmax of every head at full resolution for one network-space volume: [H, K, z, y, x] on the CPU.

    The windows are the inference engine's own (:func:`plan_windows` and :func:`run_windows`: starts on
    the size divisor, Gaussian-weighted blending of logits at each head's native resolution, then the
    contract's single upsampling), so the checkpoint chosen by validation Dice is chosen by the rule
    that is deployed. ``model`` must expose ``head_strides`` and ``size_divisor`` (the training network).
    """
    strides = [int(s) for s in model.head_strides]
    divisor = int(model.size_divisor)
    slicewise = spatial_dims == 2
    volume = torch.from_numpy(np.ascontiguousarray(image)).to(device)  # [C, z, y, x]
    shape = tuple(int(s) for s in volume.shape[1:])
    window = (slice_batch, *patch_size) if slicewise else tuple(patch_size)
    divisors = (1, divisor, divisor) if slicewise else (divisor,) * 3
    plan = plan_windows(shape, window, divisors, VALIDATION_OVERLAP, slicewise)
    head_strides = [(1, s, s) if slicewise else (s, s, s) for s in strides]
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()

    def forward(batch: torch.Tensor) -> list[torch.Tensor]:
        with autocast:
            return list(model(batch))

    logits = run_windows(forward, volume, plan, head_strides, _num_classes(model), slicewise, "validation")
    probabilities = []
    for head in logits:  # [K, z', y', x'] at the head's stride
        if slicewise:
            full = upsample_logits(head.transpose(0, 1), list(shape[1:])).transpose(0, 1)
        else:
            full = upsample_logits(head[None], list(shape))[0]
        probabilities.append(torch.softmax(full.float(), dim=0).cpu())
    return torch.stack(probabilities)


def _num_classes(model: nn.Module) -> int:
    return int(model.num_classes)


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
    """Dice of every foreground class index, by the evaluation's one Dice (1 when both are empty)."""
    return [dice(prediction == index, reference == index) for index in range(1, num_classes)]


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

"""Sliding-window inference that keeps every head at its native resolution.

Window starts are multiples of the network's size divisor, so a head with stride s sees its window
at an integer offset of its own grid: each window's head logits are blended straight into a
native-resolution accumulator for that head, with the Gaussian weights averaged down to the head's
stride. One forward pass per window gives all heads at once. Logits (not probabilities) are blended,
as the contract's single upsampling step comes after blending.

Axes are the network-space array axes (z, y, x). For a 2D model the z axis holds a batch of slices:
no blending along it, and head strides are 1 along it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import Cancelled, InputError

GAUSSIAN_SIGMA_FRACTION = 1.0 / 8.0  # of the window size, per axis (the nnU-Net convention)
MIN_RELATIVE_WEIGHT = 1e-4  # keeps window borders from dividing by an underflowed weight


@dataclass(frozen=True)
class WindowPlan:
    """Where the windows go; ``window`` is the window size, each start a multiple of the divisor."""

    shape: tuple[int, int, int]
    window: tuple[int, int, int]
    starts: tuple[tuple[int, int, int], ...]
    blend_axes: tuple[bool, bool, bool]

    @property
    def count(self) -> int:
        return len(self.starts)


def round_window(window: Sequence[int], divisor: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int]:
    """Round each window side up to the divisor and clip it to the volume (already a divisor multiple)."""
    rounded = [int(math.ceil(max(1, w) / d) * d) for w, d in zip(window, divisor, strict=False)]
    return tuple(min(r, s) for r, s in zip(rounded, shape, strict=False))  # type: ignore[return-value]


def axis_starts(size: int, window: int, divisor: int, overlap: float) -> list[int]:
    """Starts along one axis: evenly spread, multiples of ``divisor``, last window flush with the end."""
    if window >= size:
        return [0]
    step = max(divisor, int(window * (1.0 - overlap)) // divisor * divisor)
    count = int(math.ceil((size - window) / step)) + 1
    last = size - window  # a multiple of the divisor, as both sizes are
    # integer floor keeps every gap a divisor multiple no larger than the step, so the windows cover all
    return sorted({(i * last) // ((count - 1) * divisor) * divisor for i in range(count)})


def plan_windows(
    shape: Sequence[int], window: Sequence[int], divisor: Sequence[int], overlap: float, slicewise: bool
) -> WindowPlan:
    window = round_window(window, divisor, shape)
    blend = (not slicewise, True, True)
    per_axis = [
        axis_starts(s, w, d, overlap if b else 0.0)
        for s, w, d, b in zip(shape, window, divisor, blend, strict=False)
    ]
    starts = tuple((z, y, x) for z in per_axis[0] for y in per_axis[1] for x in per_axis[2])
    return WindowPlan(tuple(int(s) for s in shape), window, starts, blend)  # type: ignore[arg-type]


def shrink_window(
    window: Sequence[int], divisor: Sequence[int], slicewise: bool
) -> tuple[int, int, int] | None:
    """Halve the largest shrinkable side (a 2D model's slice batch first); None when nothing can shrink.

    Sides stop at twice the divisor: below that the deepest level is a single voxel, where instance
    normalisation fails and the receptive field sees almost nothing.
    """
    window = list(window)
    if slicewise and window[0] > 1:
        window[0] = max(1, window[0] // 2)
        return tuple(window)  # type: ignore[return-value]
    floors = [2 * d for d in divisor]
    candidates = [a for a in range(3) if a >= (1 if slicewise else 0) and window[a] > floors[a]]
    if not candidates:
        return None
    axis = max(candidates, key=lambda a: window[a])
    window[axis] = max(floors[axis], window[axis] // 2 // divisor[axis] * divisor[axis])
    return tuple(window)  # type: ignore[return-value]


def gaussian_profile(length: int, stride: int, blend: bool) -> np.ndarray:
    """1D window weights at a head's stride: the full-resolution Gaussian averaged over each coarse cell."""
    if not blend:
        return np.ones(length // stride, np.float64)
    centre = (length - 1) / 2.0
    sigma = max(length * GAUSSIAN_SIGMA_FRACTION, 1e-6)
    weights = np.exp(-0.5 * ((np.arange(length) - centre) / sigma) ** 2)
    weights = np.maximum(weights / weights.max(), MIN_RELATIVE_WEIGHT)
    return weights.reshape(length // stride, stride).mean(1)


def window_weights(
    window: Sequence[int], strides: Sequence[int], blend_axes: Sequence[bool], device: torch.device
) -> torch.Tensor:
    profiles = [gaussian_profile(w, s, b) for w, s, b in zip(window, strides, blend_axes, strict=False)]
    weights = np.einsum("i,j,k->ijk", *profiles).astype(np.float32)
    return torch.from_numpy(weights).to(device)


def run_windows(
    forward: Callable[[torch.Tensor], list[torch.Tensor]],
    volume: torch.Tensor,
    plan: WindowPlan,
    head_strides: Sequence[Sequence[int]],
    num_classes: int,
    slicewise: bool,
    source: str,
    on_window: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    batch_windows: int = 1,
    stitch_device: torch.device | None = None,
) -> list[torch.Tensor]:
    """Blend every window's head logits into per-head native-resolution accumulators.

    ``volume`` is the network-space input [C, Z, Y, X] on the compute device; ``forward`` maps one
    window batch to the list of head logits; ``head_strides`` holds each head's (z, y, x) stride.
    ``batch_windows`` windows go through one forward pass (MONAI's ``sw_batch_size``): the network
    normalises each sample on its own, so the result is that of one window per pass, only faster on
    a GPU. The accumulators live on ``stitch_device`` (default: the compute device; MONAI's
    ``device`` against ``sw_device``), so a GPU short of memory keeps running the windows while the
    blended heads grow in host memory. Returns one [K, Z/sz, Y/sy, X/sx] tensor of blended logits per
    head, on the stitch device.
    """
    if batch_windows < 1:
        raise InputError(f"batch of windows {batch_windows}: must be at least 1")
    device = volume.device if stitch_device is None else torch.device(stitch_device)
    grids = [tuple(s // st for s, st in zip(plan.shape, stride, strict=False)) for stride in head_strides]
    single = plan.count == 1  # one window covering the volume: its head logits are the result, uncopied
    accumulators: list[torch.Tensor] = []
    if not single:
        accumulators = [torch.zeros((num_classes, *g), dtype=torch.float32, device=device) for g in grids]
    weight_sums: dict[tuple[int, ...], torch.Tensor] = {}
    weights: dict[tuple[int, ...], torch.Tensor] = {}
    for stride, grid in zip(head_strides, grids, strict=False):
        key = tuple(stride)
        if key not in weights and not single:
            weights[key] = window_weights(plan.window, key, plan.blend_axes, device)
            weight_sums[key] = torch.zeros(grid, dtype=torch.float32, device=device)
    for first in range(0, plan.count, batch_windows):
        if cancel is not None and cancel():
            raise Cancelled("cancelled during inference")
        starts = plan.starts[first : first + batch_windows]
        patches = [volume[(slice(None), *_region(start, plan.window))] for start in starts]
        # [B, C, (z,) y, x]: a 2D model's slices of every window in one batch, a 3D model's windows
        batch = torch.cat([p.transpose(0, 1) for p in patches]) if slicewise else torch.stack(patches)
        outputs = forward(batch)
        if len(outputs) != len(grids):
            raise InputError(
                f"{source}: the model returned {len(outputs)} outputs but its metadata declares {len(grids)}"
            )
        for head, (output, stride) in enumerate(zip(outputs, head_strides, strict=False)):
            pieces = output.split(plan.window[0]) if slicewise else output.unbind(0)
            if len(pieces) != len(starts):
                raise InputError(
                    f"{source}: head {head} returned a batch of {output.shape[0]} for {batch.shape[0]} inputs"
                )
            for start, piece in zip(starts, pieces, strict=True):
                piece = piece.float().transpose(0, 1) if slicewise else piece.float()  # [K, z, y, x]
                expected = (num_classes, *(w // s for w, s in zip(plan.window, stride, strict=False)))
                if tuple(piece.shape) != expected:
                    raise InputError(
                        f"{source}: head {head} returned shape {tuple(piece.shape)} for a window of "
                        f"{plan.window}; the metadata's classes and strides imply {expected}"
                    )
                piece = piece.to(device)
                if single:
                    accumulators.append(piece)
                else:
                    target = _region(start, plan.window, stride)
                    accumulators[head][(slice(None), *target)] += piece * weights[tuple(stride)]
        if not single:
            for start in starts:
                for key, weight in weights.items():
                    weight_sums[key][_region(start, plan.window, key)] += weight
        del outputs, batch
        if on_window is not None:
            on_window(first + len(starts), plan.count)
    if not single:
        for accumulator, stride in zip(accumulators, head_strides, strict=False):
            accumulator /= weight_sums[tuple(stride)]
    return accumulators


def _region(
    start: Sequence[int], window: Sequence[int], stride: Sequence[int] = (1, 1, 1)
) -> tuple[slice, ...]:
    """The window's place on a grid of the given stride (starts are multiples of every stride)."""
    return tuple(slice(o // s, (o + w) // s) for o, w, s in zip(start, window, stride, strict=False))

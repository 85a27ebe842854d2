"""Streaming reduction of the kept heads into the segmentation, the voxel maps and AULA's statistics.

The blended head logits stay at native resolution (the deep heads are tiny). A head range is reduced
one head at a time: upsample (``networks.upsample_logits``, the one place that defines it), crop the
padding, softmax, then add to running sums. Only a few full-resolution tensors exist at any moment,
never one float volume per head; per-head argmax labels are kept as uint8 (one byte per voxel per
head) because the agreement map and AULA need them.

The agreement map comes from per-class vote counts (uint8, one volume per class) that are updated
the same way, so its cost does not grow with the number of kept heads.

The sums are kept in fixed point (int32, 2**24 per unit). Integer addition is exact and
order-independent, so a head range can be reached incrementally from the previous one (add the heads
that enter, subtract those that leave) and still equal a fresh reduction bit for bit. That is what
makes recombination fast enough for the Slicer module's live sliders on a CPU: moving the range by
one head costs one head, not all of them. 2**-24 is float32's resolution near 1, so the quantisation
is below float32 rounding.

Every head of a reduction writes into the same full-resolution work buffers (:class:`_Workspace`,
``out=`` and in-place operations). A fresh full-resolution tensor per operation costs more in page
faults than the arithmetic on it on the CPU, where glibc returns large freed blocks to the system.

Everything stays on the compute device; callers transfer the few final volumes once.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import Cancelled
from ..metadata_schema import MAX_ENSEMBLE_MEMBERS
from ..networks import in_plane_elements, upsample_logits_into
from ..uncertainty import entropy

FIXED_POINT_SCALE = float(1 << 24)
MAX_KEPT_HEADS = MAX_ENSEMBLE_MEMBERS  # 127 * 2**24 < 2**31 keeps int32 sums exact; uint8 counts fit too
MAP_NAMES = ("agreement", "entropy", "mutual_information", "variance")


@dataclass
class ReducedVolumes:
    """One head range's results in cropped network space (on the compute device)."""

    label_index: torch.Tensor  # uint8 class index of the ensemble (argmax of the mean probability)
    maps: dict[str, torch.Tensor]  # float32 voxel maps that were asked for
    confusions: list[torch.Tensor]  # K x K counts per adjacent kept pair (rows: shallower head)
    class_counts: torch.Tensor  # voxels per class index in the ensemble label


class HeadStream:
    """Per-head native logits plus caches, reducible to any contiguous head range."""

    def __init__(
        self,
        logits: Sequence[torch.Tensor],
        full_shape: Sequence[int],
        crop: Sequence[slice],
        slicewise: bool,
        num_classes: int,
    ) -> None:
        self.logits = list(logits)
        self.full_shape = [int(s) for s in full_shape]
        self.crop = tuple(crop)
        self.slicewise = slicewise
        self.num_classes = num_classes
        self._labels: dict[int, torch.Tensor] = {}
        self._confusions: dict[int, torch.Tensor] = {}
        self._range = (0, 0)
        self._tracked: frozenset[str] = frozenset()
        self._sums: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return self.logits[0].device

    @property
    def num_heads(self) -> int:
        return len(self.logits)

    def to(self, device: torch.device, keep_caches: bool = False) -> HeadStream:
        """The same stream on another device.

        Without caches when CUDA ran out of memory while reducing (a half-updated sum must not move);
        with them when a finished prediction gives its device memory back, so that the next
        recombination still costs only the heads that change.
        """
        moved = HeadStream(
            [t.to(device) for t in self.logits], self.full_shape, self.crop, self.slicewise, self.num_classes
        )
        if keep_caches:
            moved._labels = {head: t.to(device) for head, t in self._labels.items()}
            moved._confusions = {head: t.to(device) for head, t in self._confusions.items()}
            moved._sums = {name: t.to(device) for name, t in self._sums.items()}
            moved._range, moved._tracked = self._range, self._tracked
        return moved

    def head_probabilities(self, head: int, workspace: _Workspace | None = None) -> torch.Tensor:
        """Softmax of one head at full resolution, cropped to the image: [K, z, y, x] float32.

        With a workspace, the result lives in its ``probabilities`` buffer until the next head.
        """
        workspace = workspace or _Workspace(self)
        logits = self.logits[head]
        if list(logits.shape[1:]) == self.full_shape:  # a full-resolution head needs no upsampling
            upsampled = logits
        elif self.slicewise:  # [K, Z, y, x]: slices are the batch, bilinear in-plane as the 2D contract says
            upsampled = upsample_logits_into(logits.transpose(0, 1), workspace.upsampled).transpose(0, 1)
        else:
            upsampled = upsample_logits_into(logits[None], workspace.upsampled, workspace.in_plane)[0]
        probabilities = workspace.probabilities
        torch.ops.aten._softmax.out(upsampled[(slice(None), *self.crop)], 0, False, out=probabilities)
        if head not in self._labels:
            self._labels[head] = _first_argmax(probabilities, workspace)
        return probabilities

    def reduce(
        self,
        first: int,
        stop: int,
        maps: Sequence[str],
        cancel: Callable[[], bool] | None = None,
    ) -> ReducedVolumes:
        """Segmentation, maps and pair statistics of heads ``first .. stop - 1``."""
        if not 0 <= first < stop <= self.num_heads:
            raise ValueError(f"head range {first}:{stop} is not within 0:{self.num_heads}")
        if stop - first > MAX_KEPT_HEADS:
            raise ValueError(f"at most {MAX_KEPT_HEADS} heads can be combined")
        unknown = set(maps) - set(MAP_NAMES)
        if unknown:
            raise ValueError(f"unknown map(s) {sorted(unknown)}; choose from {MAP_NAMES}")
        self._move_to(first, stop, _sums_needed(maps), cancel)
        count = stop - first
        sum_p = self._sums["p"]
        label = _first_argmax(sum_p)  # exact on the integer sums, so ties resolve identically every time
        result: dict[str, torch.Tensor] = {}
        if "agreement" in maps:  # votes for the ensemble's own label, read from the per-class vote counts
            agreeing = self._sums["votes"].gather(0, label.long()[None])[0]
            result["agreement"] = agreeing.float().div_(count)
        if {"entropy", "mutual_information", "variance"} & set(maps):
            mean = self.mean_probabilities(first, stop)
            to_mean = 1.0 / (FIXED_POINT_SCALE * count)
            if {"entropy", "mutual_information"} & set(maps):
                entropy_of_mean = entropy(mean, 0)
                if "entropy" in maps:
                    result["entropy"] = entropy_of_mean
                if "mutual_information" in maps:
                    mean_entropy = _scaled(self._sums["h"], to_mean * math.log(self.num_classes))
                    result["mutual_information"] = mean_entropy.neg_().add_(entropy_of_mean).clamp_min_(0.0)
            if "variance" in maps:  # mean over classes of E[p²] - E[p]², from the class sum of p² per head
                squared_mean = (mean * mean).sum(0)  # not linalg.vector_norm: 10x slower over dim 0
                variance = _scaled(self._sums["p2"], to_mean).sub_(squared_mean)
                result["variance"] = variance.div_(self.num_classes).clamp_min_(0.0)
            del mean
        confusions = [self._pair_confusion(head) for head in range(first, stop - 1)]
        class_counts = torch.bincount(label.flatten(), minlength=self.num_classes)
        return ReducedVolumes(label, {name: result[name] for name in maps}, confusions, class_counts)

    def mean_probabilities(self, first: int, stop: int) -> torch.Tensor:
        """Mean softmax of the range, [K, z, y, x] float32."""
        self._move_to(first, stop, self._tracked, None)
        return _scaled(self._sums["p"], 1.0 / (FIXED_POINT_SCALE * (stop - first)))

    def _move_to(
        self, first: int, stop: int, needed: frozenset[str], cancel: Callable[[], bool] | None
    ) -> None:
        try:
            self._update_sums(first, stop, needed | {"p"}, cancel)
        except BaseException:  # a half-updated sum must never be reused: start afresh next time
            self._range, self._sums = (0, 0), {}
            raise

    def _update_sums(
        self, first: int, stop: int, needed: frozenset[str], cancel: Callable[[], bool] | None
    ) -> None:
        current_first, current_stop = self._range
        overlap = current_first < stop and first < current_stop
        incremental = abs(first - current_first) + abs(stop - current_stop) if overlap else math.inf
        if not needed <= self._tracked or incremental >= stop - first:
            self._tracked = needed | self._tracked if overlap else needed
            self._sums = {}
            self._range = (first, first)
            changes = [(head, +1) for head in range(first, stop)]
        else:
            leaving = [*range(current_first, first), *range(stop, current_stop)]
            entering = [*range(first, current_first), *range(current_stop, stop)]
            changes = [(head, -1) for head in leaving] + [(head, +1) for head in entering]
        if changes:
            workspace = _Workspace(self)
            for head, sign in changes:
                _check(cancel)
                self._accumulate(head, sign, workspace)
        self._range = (first, stop)

    def _accumulate(self, head: int, sign: int, workspace: _Workspace) -> None:
        probabilities = self.head_probabilities(head, workspace)
        if "p2" in self._tracked:  # the class sum of p² is all the variance map needs
            torch.mul(probabilities, probabilities, out=workspace.scratch)
            self._add("p2", torch.sum(workspace.scratch, 0, out=workspace.voxel), sign, workspace.voxel_fixed)
        if "h" in self._tracked:  # entropy normalised to [0, 1] by log K
            torch.special.entr(probabilities, out=workspace.scratch)
            entropy_sum = torch.sum(workspace.scratch, 0, out=workspace.voxel)
            self._add("h", entropy_sum.div_(math.log(self.num_classes)), sign, workspace.voxel_fixed)
        self._add("p", probabilities, sign, workspace.fixed)  # the head's last use: quantised in place
        if "votes" in self._tracked:  # per class, how many kept heads vote for it (uint8: at most 127 heads)
            label = self._labels[head]
            if "votes" not in self._sums:
                shape = (self.num_classes, *label.shape)
                self._sums["votes"] = torch.zeros(shape, dtype=torch.uint8, device=self.device)
            votes, vote = self._sums["votes"], workspace.mask.view(torch.uint8)
            for index in range(self.num_classes):
                torch.eq(label, index, out=workspace.mask)
                if sign > 0:
                    votes[index].add_(vote)
                else:
                    votes[index].sub_(vote)

    def _add(self, name: str, values: torch.Tensor, sign: int, fixed: torch.Tensor) -> None:
        """Add ``sign`` times ``values`` (a work buffer, overwritten) to the fixed-point sum ``name``."""
        fixed.copy_(values.mul_(FIXED_POINT_SCALE).round_())
        if name not in self._sums:
            self._sums[name] = torch.zeros_like(fixed)
        self._sums[name].add_(fixed, alpha=sign)

    def _pair_confusion(self, head: int) -> torch.Tensor:
        if head not in self._confusions:
            shallow, deep = self._labels[head], self._labels[head + 1]
            k = self.num_classes
            joint = shallow * k + deep if k * k <= 256 else shallow.to(torch.int32) * k + deep
            self._confusions[head] = torch.bincount(joint.flatten(), minlength=k * k).reshape(k, k)
        return self._confusions[head]


def _sums_needed(maps: Sequence[str]) -> frozenset[str]:
    needed = {"p"}
    if "agreement" in maps:
        needed.add("votes")
    if "mutual_information" in maps:
        needed.add("h")
    if "variance" in maps:
        needed.add("p2")
    return frozenset(needed)


def _first_argmax(values: torch.Tensor, workspace: _Workspace | None = None) -> torch.Tensor:
    """Class index of the maximum along dim 0 as uint8 (the first one on ties).

    On the CPU, ``argmax`` and ``max(dim)`` over a short leading class axis are slower than a chain of
    elementwise comparisons (1.7x for three classes on 10 M voxels); both give the first maximum.
    A workspace of the same dtype lends its buffers for the running maximum and the comparisons.
    """
    if values.shape[0] > 16:
        return torch.max(values, dim=0).indices.to(torch.uint8)
    if workspace is not None and workspace.voxel.dtype == values.dtype:
        best, greater = workspace.voxel, workspace.mask
    else:
        best = torch.empty_like(values[0])
        greater = torch.empty(values.shape[1:], dtype=torch.bool, device=values.device)
    index = torch.gt(values[1], values[0], out=greater).to(torch.uint8)
    torch.maximum(values[0], values[1], out=best)
    for k in range(2, values.shape[0]):
        torch.gt(values[k], best, out=greater)
        index = torch.where(greater, k, index)  # a Python scalar: no host-to-device copy
        torch.maximum(best, values[k], out=best)
    return index


class _Workspace:
    """Full-resolution buffers that every head of one reduction reuses.

    Each buffer is allocated on first use, so a reduction pays only for the sums it tracks.
    """

    def __init__(self, stream: HeadStream) -> None:
        self.classes, self.device = stream.num_classes, stream.device
        self.dtype = stream.logits[0].dtype  # float32 from the engine; tests may pass float64
        full = stream.full_shape
        self.cropped = [len(range(*part.indices(size))) for part, size in zip(stream.crop, full, strict=True)]
        # slice-wise models upsample with the slices as the batch: [Z, K, y, x]
        batch, spatial = (full[0], full[1:]) if stream.slicewise else (1, full)
        self.upsampled_shape = (batch, self.classes, *spatial)
        low_resolution = [t for t in stream.logits if list(t.shape[1:]) != full]
        needed = [in_plane_elements((1, *t.shape), full) for t in low_resolution]
        self.in_plane_elements = max(needed, default=0)

    def _empty(self, shape: Sequence[int], dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.empty(tuple(shape), dtype=dtype or self.dtype, device=self.device)

    @functools.cached_property
    def upsampled(self) -> torch.Tensor:
        return self._empty(self.upsampled_shape)

    @functools.cached_property
    def in_plane(self) -> torch.Tensor:
        """Scratch for the in-plane step of separable 3D upsampling."""
        return self._empty((self.in_plane_elements,))

    @functools.cached_property
    def probabilities(self) -> torch.Tensor:
        return self._empty((self.classes, *self.cropped))

    @functools.cached_property
    def scratch(self) -> torch.Tensor:
        return self._empty((self.classes, *self.cropped))

    @functools.cached_property
    def fixed(self) -> torch.Tensor:
        return self._empty((self.classes, *self.cropped), torch.int32)

    @functools.cached_property
    def voxel(self) -> torch.Tensor:
        return self._empty(self.cropped)

    @functools.cached_property
    def voxel_fixed(self) -> torch.Tensor:
        return self._empty(self.cropped, torch.int32)

    @functools.cached_property
    def mask(self) -> torch.Tensor:
        return self._empty(self.cropped, torch.bool)


def reduction_bytes_per_voxel(num_classes: int, num_heads: int) -> int:
    """Bytes a reduction holds per full-resolution voxel, at most: what :class:`_Workspace` and the sums
    allocate, kept here beside them so that memory planning follows any change to the buffers.

    Six K-channel float32/int32 volumes (upsampled, probabilities, scratch, fixed, the in-plane
    scratch bounded by one, the sum of p), four 1-channel ones (voxel, voxel_fixed and the entropy and
    p² sums), the mask, K uint8 vote counts and one uint8 label per head.
    """
    return 4 * 6 * num_classes + 4 * 4 + 1 + num_classes + num_heads


def _scaled(fixed: torch.Tensor, factor: float) -> torch.Tensor:
    """A fixed-point sum as float32 times ``factor`` (convert, then scale in place: 2x faster on the
    CPU than ``fixed.float() / x`` or ``torch.mul(fixed, factor)``, whose mixed-type kernels are slow)."""
    return fixed.to(torch.float32).mul_(factor)


def _check(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("cancelled while combining heads")

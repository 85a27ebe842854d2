"""A prediction and its recombination: new head ranges or thresholds without a new forward pass.

A :class:`Prediction` shares one :class:`InferenceSession` with every prediction recombined from it.
The session holds the blended native-resolution head logits (on the compute device) and the
streaming reducer's caches, so changing the kept heads costs only the heads that enter or leave the
range, and changing the threshold costs nothing but the decision. Recombination calls the very code a
fresh prediction uses, so both give identical results.

AULA is computed in network space (the model's orientation and spacing, padding removed): that is
where the heads predict, and it keeps the score independent of the input's voxel size. The
segmentation, the maps and the probabilities are returned in the input's geometry.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ..contract import ModelMetadata
from ..decision_scores import decision_score_of, label, score_value
from ..devices import device_report, is_out_of_memory, release_cached_memory
from ..errors import InputError
from ..preprocessing import NetworkGeometry, to_input_space
from ..quality import NO_MAP_TEXT, DiceEstimate, quality_map_of
from ..uncertainty import DEFAULT_AULA_THRESHOLD, AulaResult, aula_from_confusions
from .reduction import MAP_NAMES, HeadStream, ReducedVolumes


@dataclass
class InferenceSession:
    """What one forward pass produced, shared by all predictions recombined from it."""

    metadata: ModelMetadata
    member_names: list[str]
    stream: HeadStream
    geometry: NetworkGeometry
    reference: sitk.Image  # the input image (only its geometry is used)
    source: str
    model_path: str
    window: dict[str, Any]
    device_info: dict[str, Any]
    forward_timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    model_identity: dict[str, Any] = field(default_factory=dict)  # name and sha256 of the model file

    @property
    def background_index(self) -> int:
        return [c.value for c in self.metadata.classes].index(0)

    def reduce(
        self, first: int, stop: int, maps: Sequence[str], cancel: Callable[[], bool] | None
    ) -> ReducedVolumes:
        """Reduce on the compute device; on CUDA out-of-memory, continue on the CPU with one warning."""
        try:
            return self.stream.reduce(first, stop, maps, cancel)
        except Exception as error:  # noqa: BLE001 - only memory errors are handled, the rest re-raised
            if not (is_out_of_memory(error) and self.stream.device.type == "cuda"):
                raise
        release_cached_memory(self.stream.device)
        message = (
            f"{self.source}: CUDA ran out of memory while combining heads; continuing on the CPU (slower)"
        )
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        self.warnings.append(message)
        self.stream = self.stream.to(torch.device("cpu"))
        self.device_info = device_report(torch.device("cpu"))
        return self.stream.reduce(first, stop, maps, cancel)

    def release_device_memory(self) -> None:
        """Move the retained head outputs and caches to the CPU and give the device's cache back.

        A worklist keeps one session per case; on CUDA each would otherwise hold its head outputs in
        GPU memory until the scene is closed. Recombination keeps working, on the CPU.
        """
        device = self.stream.device
        if device.type == "cpu":
            return
        self.stream = self.stream.to(torch.device("cpu"), keep_caches=True)
        release_cached_memory(device)

    def to_input_space(self, volume: torch.Tensor, is_label: bool) -> sitk.Image:
        """One network-space volume (cropped) onto the input's grid; the only host transfer per volume."""
        array = volume.detach().cpu().numpy()
        geometry = NetworkGeometry(self.geometry.reference, [(0, 0)] * 3, array.shape)
        return to_input_space(array, geometry, self.reference, is_label)


def resolve_head_range(
    count: int,
    default_skip: int,
    skip_heads: int | None,
    head_range: Sequence[int | None] | None,
    source: str,
) -> tuple[int, int]:
    """(first, stop) of the kept heads from ``skip_heads`` or ``head_range`` (not both; stop None = all)."""
    if skip_heads is not None and head_range is not None:
        raise InputError(f"{source}: give either skip_heads or head_range, not both")
    if head_range is not None:
        first_value, stop_value = head_range
        first, stop = int(first_value), count if stop_value is None else int(stop_value)
    else:
        first, stop = int(default_skip if skip_heads is None else skip_heads), count
    if not 0 <= first < stop <= count:
        raise InputError(
            f"{source}: head range {first}:{stop} must keep at least one of the model's {count} "
            f"heads (0 <= first < stop <= {count})"
        )
    return first, stop


def resolve_threshold(threshold: float | None, metadata: ModelMetadata, source: str) -> tuple[float, str]:
    if threshold is not None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise InputError(
                f"{source}: threshold {threshold} must be in [0, 1] (it applies to normalised AULA)"
            )
        return float(threshold), "argument"
    if metadata.aula_threshold is not None:
        return float(metadata.aula_threshold), "model"
    return DEFAULT_AULA_THRESHOLD, "default"


def resolve_maps(maps: Sequence[str] | str | None) -> tuple[str, ...]:
    if maps is None:
        return ()
    if isinstance(maps, str):
        maps = [maps]
    names = []
    for name in maps:
        if name == "all":
            names.extend(MAP_NAMES)
        elif name in MAP_NAMES:
            names.append(name)
        elif name != "none":
            raise InputError(f"unknown map {name!r}; choose from {', '.join(MAP_NAMES)}, all or none")
    return tuple(dict.fromkeys(names))


class Prediction:
    """Segmentation, voxel maps, AULA and the accept/flag decision for one head range."""

    def __init__(
        self,
        session: InferenceSession,
        head_range: tuple[int, int],
        segmentation: sitk.Image,
        maps: dict[str, sitk.Image],
        aula: AulaResult,
        threshold: float,
        threshold_source: str,
        timings: dict[str, float],
        map_names: Sequence[str] | None = None,
    ) -> None:
        self._session = session
        self.head_range = head_range
        self.head_names = session.member_names[head_range[0] : head_range[1]]
        # None (with ``map_names``): released, derived again on first use (see release_input_space)
        self._segmentation: sitk.Image | None = segmentation
        self._maps: dict[str, sitk.Image] | None = None if segmentation is None else dict(maps)
        self._map_names = tuple(maps) if segmentation is not None else tuple(map_names or ())
        self.aula = aula
        self.threshold = threshold
        self.threshold_source = threshold_source
        self.timings = timings
        self.device = session.device_info["device"]
        self.score_name = decision_score_of(session.metadata)
        self.score = score_value(aula, self.score_name)
        self.accepted, self.reason = _decide(aula, self.score, self.score_name, threshold)
        self.decision = "accepted" if self.accepted else "flagged"
        self.estimated_dice, self.estimated_dice_text = _estimate_quality(session, head_range, aula)
        self._probabilities: sitk.Image | None = None

    @property
    def segmentation(self) -> sitk.Image:
        """The ensemble's label map on the input's grid (uint8 label values)."""
        return self._input_space()[0]

    @property
    def maps(self) -> Mapping[str, sitk.Image]:
        """The voxel maps on the input's grid, by name; the names are known without deriving the images."""
        return self._maps if self._maps is not None else _MapsOnDemand(self)

    @property
    def map_names(self) -> tuple[str, ...]:
        return self._map_names

    def release_input_space(self) -> None:
        """Drop the input-grid images once they have been used (a review writes them into its scene).

        On a large input they are most of what a shown case holds (a float32 map and a label map of the
        input's size). They are derived again, bit for bit, when next asked for: one reduction of the
        retained head outputs and the resampling, as a kept-heads change costs.
        """
        self._segmentation = self._maps = None

    def _input_space(self) -> tuple[sitk.Image, dict[str, sitk.Image]]:
        if self._segmentation is None or self._maps is None:
            fresh = build_prediction(
                self._session,
                self.head_range,
                self._map_names,
                self.threshold,
                self.threshold_source,
                None,
                time.perf_counter(),
            )
            self._segmentation, self._maps = fresh._segmentation, fresh._maps
        return self._segmentation, self._maps

    @property
    def metadata(self) -> ModelMetadata:
        return self._session.metadata

    @property
    def warnings(self) -> list[str]:
        return list(self._session.warnings)

    @property
    def session(self) -> InferenceSession:
        """The forward pass's retained outputs, shared with every prediction recombined from this one."""
        return self._session

    @property
    def source(self) -> str:
        """The input this prediction was made from, as given to the engine."""
        return self._session.source

    @property
    def model_identity(self) -> dict[str, Any]:
        """``{"path", "name", "sha256"}`` of the model file that made the head outputs."""
        session = self._session
        identity = {"path": session.model_path, "name": session.metadata.name, "sha256": None}
        return {**identity, **session.model_identity}

    @property
    def retained_device(self) -> str:
        """Where the head outputs live, hence where recombination runs."""
        return str(self._session.stream.device)

    def release_device_memory(self) -> None:
        """Move the head outputs of this prediction (and of all sharing its pass) to the CPU."""
        self._session.release_device_memory()

    @property
    def probabilities(self) -> sitk.Image:
        """Mean softmax of the kept heads, a K-component float32 image in the input geometry (lazy)."""
        if self._probabilities is None:
            mean = self._session.stream.mean_probabilities(*self.head_range)
            channels = [self._session.to_input_space(channel, is_label=False) for channel in mean]
            del mean
            self._probabilities = sitk.Compose(channels)
        return self._probabilities

    def recombine(
        self,
        head_range: Sequence[int] | None = None,
        skip_heads: int | None = None,
        threshold: float | None = None,
        maps: Sequence[str] | str | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> Prediction:
        """Re-derive everything for other heads, maps or threshold, without running the network."""
        session = self._session
        start = time.perf_counter()
        if head_range is None and skip_heads is None:
            first_stop = self.head_range
        else:
            first_stop = resolve_head_range(
                len(session.member_names), session.metadata.skip_heads, skip_heads, head_range, session.source
            )
        wanted = tuple(self.maps) if maps is None else resolve_maps(maps)
        if threshold is None:
            threshold_value, threshold_source = self.threshold, self.threshold_source
        else:
            threshold_value, threshold_source = resolve_threshold(threshold, session.metadata, session.source)
        if first_stop == self.head_range and set(wanted) <= set(self._map_names):
            # nothing to recompute: same volumes (or the same released ones), new decision
            return Prediction(
                session,
                first_stop,
                self._segmentation,
                {m: self._maps[m] for m in wanted} if self._maps is not None else {},
                self.aula,
                threshold_value,
                threshold_source,
                {"total": time.perf_counter() - start},
                map_names=wanted,
            )
        return build_prediction(session, first_stop, wanted, threshold_value, threshold_source, cancel, start)

    def to_report(self) -> dict[str, Any]:
        """Everything a reviewer or a script needs, JSON-serialisable (NaN becomes null)."""
        session = self._session
        metadata = session.metadata
        image = self.segmentation
        return {
            "input": str(session.source),
            "model": {**self.model_identity, "kind": metadata.kind},
            "heads": {
                "first": self.head_range[0],
                "stop": self.head_range[1],
                "kept": list(self.head_names),
                "all": list(session.member_names),
            },
            "aula": self.aula.to_dict(),
            "aula_space": "network (model orientation and spacing, padding removed)",
            "score": None if not math.isfinite(self.score) else float(self.score),
            "score_name": self.score_name,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "decision": self.decision,
            "accepted": self.accepted,
            "estimated_dice": None if self.estimated_dice is None else self.estimated_dice.to_dict(),
            "estimated_dice_text": self.estimated_dice_text,
            "reason": self.reason,
            "classes": [{"name": c.name, "value": c.value} for c in metadata.classes],
            "maps": list(self.maps),
            "geometry": {
                "size": list(image.GetSize()),
                "spacing": list(image.GetSpacing()),
                "origin": list(image.GetOrigin()),
                "direction": list(image.GetDirection()),
                "network_shape_zyx": list(session.geometry.shape),
            },
            "window": dict(session.window),
            "device": self.device,
            "device_report": dict(session.device_info),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "warnings": self.warnings,
        }


class _MapsOnDemand(Mapping[str, sitk.Image]):
    """A released prediction's maps: names and membership for free, an image derived again on access."""

    def __init__(self, prediction: Prediction) -> None:
        self._prediction = prediction

    def __getitem__(self, name: str) -> sitk.Image:
        if name not in self._prediction.map_names:
            raise KeyError(name)
        return self._prediction._input_space()[1][name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._prediction.map_names)

    def __len__(self) -> int:
        return len(self._prediction.map_names)


def build_prediction(
    session: InferenceSession,
    head_range: tuple[int, int],
    maps: Sequence[str],
    threshold: float,
    threshold_source: str,
    cancel: Callable[[], bool] | None,
    start: float,
    timings: dict[str, float] | None = None,
) -> Prediction:
    """Reduce a head range on the device, then move the few final volumes into the input geometry."""
    timings = dict(timings or {})
    reduce_start = time.perf_counter()
    reduced = session.reduce(*head_range, maps, cancel)
    metadata = session.metadata
    values = [c.value for c in metadata.classes]
    label = reduced.label_index
    if values != list(range(len(values))):  # class index -> label value, still on the device
        label = torch.tensor(values, dtype=torch.uint8, device=label.device)[label.long()]
    confusions = torch.stack(reduced.confusions).cpu().numpy() if reduced.confusions else np.zeros((0, 0, 0))
    counts = reduced.class_counts.cpu().numpy()
    if session.stream.device.type == "cuda":
        torch.cuda.synchronize(session.stream.device)
    timings["reduce"] = time.perf_counter() - reduce_start
    post_start = time.perf_counter()
    names = [c.name for c in metadata.classes]
    aula = aula_from_confusions(
        list(confusions),
        names,
        session.background_index,
        session.member_names[head_range[0] : head_range[1]],
        counts,
    )
    segmentation = session.to_input_space(label, is_label=True)
    map_images = {
        name: session.to_input_space(volume, is_label=False) for name, volume in reduced.maps.items()
    }
    timings["postprocess"] = time.perf_counter() - post_start
    timings["total"] = time.perf_counter() - start
    return Prediction(
        session, head_range, segmentation, map_images, aula, threshold, threshold_source, timings
    )


def _estimate_quality(
    session: InferenceSession, head_range: tuple[int, int], aula: AulaResult
) -> tuple[DiceEstimate | None, str]:
    """The model's estimated Dice for this result, or None with the reason shown instead.

    The map was fitted on the model's default kept heads; another head range gives another score
    distribution, so no estimate is offered for it rather than a wrong one.
    """
    quality = quality_map_of(session.metadata)
    if quality is None:
        return None, NO_MAP_TEXT
    default = (session.metadata.skip_heads, len(session.member_names))
    if tuple(head_range) != default:
        return None, (
            f"no estimated Dice for heads {head_range[0]}:{head_range[1]} (the quality map is calibrated "
            f"for the default heads {default[0]}:{default[1]})"
        )
    estimate = quality.estimate(score_value(aula, quality.score))
    if estimate is None:
        return None, f"no estimated Dice ({quality.score} is undefined for this result)"
    return estimate, estimate.text()


def _decide(aula: AulaResult, score: float, score_name: str, threshold: float) -> tuple[bool, str]:
    if not math.isfinite(score):
        return False, "AULA is undefined with a single kept head (no adjacent pair to compare)"
    if aula.empty_foreground:
        return False, "the ensemble predicts no foreground"
    if score < threshold:
        return False, f"{label(score_name)} {score:.3f} is below the threshold {threshold:.3f}"
    return True, f"{label(score_name)} {score:.3f} reaches the threshold {threshold:.3f}"

"""The training configuration: one JSON-able record of every choice, saved as ``config.json``.

Values that depend on the data (``target_spacing="median"``, ``orientation="auto"``, an empty
``patch_size``) are resolved when a run starts and written back resolved, so the run folder says
exactly what was done and ``export`` can rebuild the network and the preprocessing from it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError

NORMALIZATIONS = ("percentile", "zscore", "ct", "none")
OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("cosine", "poly", "constant")
AMP_MODES = ("auto", "bf16", "fp16", "off")
NORMS = ("instance", "batch", "group", "none")


@dataclass
class TrainConfig:
    out: str = ""
    dataset: str | None = None  # an MSD dataset.json
    images: str | None = None  # or two folders matched by file name
    labels: str | None = None
    class_names: list[str] | None = None  # folder mode: names of label values 0, 1, ...
    max_cases: int | None = None  # use a seeded subset of the cases (quick experiments, tests)
    # network
    spatial_dims: int = 3
    depth: int = 5
    base_channels: int = 16
    max_channels: int = 256
    norm: str = "instance"
    dropout: float = 0.0
    # preprocessing
    target_spacing: list[float] | str | None = "median"  # [x, y, z] mm, "median" of the data, None = native
    orientation: str | None = "auto"  # "auto" = the training images' most common code, None = as given
    normalization: str = "percentile"
    percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    ct_window: list[float] | None = None  # [centre, width] for normalization "ct"
    patch_size: list[int] = field(default_factory=list)  # array order; empty = from the data
    # optimisation
    epochs: int = 50
    batch_size: int = 2
    iterations_per_epoch: int | None = None  # None: one patch per training case per epoch
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "cosine"
    grad_clip: float = 12.0
    head_weights: str | list[float] = "uniform"
    foreground_probability: float = 0.5
    augment: bool = True
    flip_axes: list[int] | None = None  # spatial axes (array order) that may be mirrored; None = all
    # validation and bookkeeping
    validation_fraction: float = 0.2
    validate_every: int = 1
    skip_heads: int = 0  # shallow heads left out of the validation ensemble (and the export default)
    seed: int = 0
    split_seed: int | None = None  # seed of the train/validation split (None: seed); lets
    # independently seeded runs (a deep ensemble's members) share one held-out set
    device: str = "auto"
    amp: str = "auto"
    threads: int | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, document: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(document) - known)
        if unknown:
            raise InputError(f"{source}: unknown training option(s) {unknown}")
        config = cls(**document)
        config.validate(source)
        return config

    def validate(self, source: str = "config") -> None:
        """Check every value by type first (a config.json may hold anything), then by range.

        NaN and infinity are refused everywhere: ``nan <= 0`` is False, so a range check alone would let
        ``lr=nan`` through to train a network of NaNs.
        """
        problems = _type_problems(self)
        if problems:
            raise InputError(f"{source}: invalid training configuration: {'; '.join(problems)}")
        if not self.out:
            problems.append("an output folder (out) is required")
        if bool(self.dataset) == bool(self.images or self.labels):
            problems.append("give either a dataset.json or both an images and a labels folder")
        elif not self.dataset and not (self.images and self.labels):
            problems.append("folder mode needs both images and labels")
        if self.spatial_dims not in (2, 3):
            problems.append("spatial_dims must be 2 or 3")
        if self.depth < 2:
            problems.append("depth must be at least 2")
        if self.base_channels < 1:
            problems.append("base_channels must be positive")
        if not 0 <= self.dropout < 1:
            problems.append("dropout must be in [0, 1)")
        choices = [
            ("norm", NORMS),
            ("normalization", NORMALIZATIONS),
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("amp", AMP_MODES),
        ]
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)}")
        if self.normalization == "ct" and (
            not self.ct_window or len(self.ct_window) != 2 or self.ct_window[1] <= 0
        ):
            problems.append("normalization 'ct' needs ct_window = [centre, width] with width > 0")
        if isinstance(self.target_spacing, str) and self.target_spacing != "median":
            problems.append("target_spacing must be three numbers, 'median' or null")
        if isinstance(self.target_spacing, list) and (
            len(self.target_spacing) != 3 or min(self.target_spacing) <= 0
        ):
            problems.append("target_spacing must be three positive numbers (x, y, z)")
        divisor = 2 ** (self.depth - 1)
        if self.patch_size and (
            len(self.patch_size) != self.spatial_dims
            or any(p < divisor or p % divisor for p in self.patch_size)
        ):
            problems.append(f"patch_size must hold {self.spatial_dims} multiples of {divisor} (2**(depth-1))")
        for name in ("epochs", "batch_size", "validate_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.iterations_per_epoch is not None and self.iterations_per_epoch < 1:
            problems.append("iterations_per_epoch must be at least 1")
        if self.lr <= 0:
            problems.append("lr must be positive")
        if self.weight_decay < 0:
            problems.append("weight_decay must be at least 0")
        if self.grad_clip <= 0:
            problems.append("grad_clip must be positive")
        if len(self.percentiles) != 2 or not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            problems.append("percentiles must be [low, high] with 0 <= low < high <= 100")
        if self.depth >= 2:
            from ..losses import resolve_head_weights

            try:
                resolve_head_weights(self.head_weights, self.num_heads)
            except InputError as error:
                problems.append(str(error))
        if self.threads is not None and self.threads < 1:
            problems.append("threads must be at least 1")
        if self.max_channels < self.base_channels:
            problems.append("max_channels must be at least base_channels")
        if not 0 <= self.validation_fraction < 1:
            problems.append("validation_fraction must be in [0, 1)")
        if not 0 <= self.foreground_probability <= 1:
            problems.append("foreground_probability must be in [0, 1]")
        if self.skip_heads < 0 or self.skip_heads >= 2 * self.depth:
            problems.append(f"skip_heads must be in [0, {2 * self.depth - 1}]")
        if self.max_cases is not None and self.max_cases < 2:
            problems.append("max_cases must be at least 2")
        if problems:
            raise InputError(f"{source}: invalid training configuration: {'; '.join(problems)}")

    @property
    def num_heads(self) -> int:
        return 2 * self.depth

    @property
    def size_divisor(self) -> int:
        return 2 ** (self.depth - 1)


def _type_problems(config: TrainConfig) -> list[str]:
    """Fields whose value does not have the declared type (or is a non-finite number)."""
    problems = []
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        annotation = str(item.type)
        if not any(_matches(value, kind.strip()) for kind in annotation.split("|")):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            wanted = " or ".join(_describe(kind.strip()) for kind in annotation.split("|"))
            problems.append(f"{item.name} must be {wanted} (got {shown})")
    return problems


_KIND_WORDS = {"None": "null", "bool": "true or false", "int": "an integer", "float": "a finite number",
               "str": "text"}  # fmt: skip


def _describe(kind: str) -> str:
    if kind.startswith("list["):
        return f"a list of {_describe(kind[5:-1]).removeprefix('an ').removeprefix('a ')}s"
    return _KIND_WORDS.get(kind, kind)


def _matches(value: Any, kind: str) -> bool:
    if kind == "None":
        return value is None
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "str":
        return isinstance(value, str)
    if kind.startswith("list[") and kind.endswith("]"):
        return isinstance(value, list) and all(_matches(v, kind[5:-1]) for v in value)
    raise TypeError(f"unhandled annotation {kind!r}")  # a new field type: extend this check

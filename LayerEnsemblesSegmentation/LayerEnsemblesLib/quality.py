"""Estimated Dice: the model's calibrated map from its image-level score to an expected quality.

AULA is a number in [0, 1] that a reviewer cannot read as a quality. A model calibrated with
``layer-ensembles calibrate --quality-map`` carries, in its metadata (``quality_map``), a monotone
non-decreasing map from the decision score to the Dice expected on cases like its validation cases
(isotonic regression), with an interval: the 10th to 90th percentile of the validation Dice among the
cases whose score was closest. Between knots the map is linear; outside them it is constant.

Limits, said wherever the number is shown: the map is only as good as its validation data (for the
shipped model, 30 hippocampus MRI crops under 17 synthetic acquisition conditions); it holds for the
head range and score it was fitted on (the model's default kept heads), and a case unlike the
validation data can be wrong with a confident-looking number. Pure numpy: it runs inside Slicer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

NO_MAP_TEXT = "no estimated Dice (the model has no calibrated quality map)"


@dataclass
class DiceEstimate:
    value: float
    low: float
    high: float
    score: str

    def text(self) -> str:
        """The string the CLI, the Slicer module and the web app show beside AULA."""
        return f"estimated Dice {self.value:.2f} ({self.low:.2f}–{self.high:.2f})"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "text": self.text()}


@dataclass
class QualityMap:
    """Knots of the monotone map: at ``scores[i]`` the expected Dice is ``dice[i]``, interval low/high."""

    score: str
    scores: list[float]
    dice: list[float]
    low: list[float]
    high: list[float]
    metric: str = "dice_mean"
    interval: list[float] = field(default_factory=lambda: [0.1, 0.9])
    cases: int = 0
    rows: int = 0
    data: str = ""

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> QualityMap:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in document.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def problems(self) -> list[str]:
        """Why a consumer could not apply this map (empty when it can)."""
        problems = []
        try:  # an untrusted document: any type may arrive here
            values = [np.asarray(v, float) for v in (self.scores, self.dice, self.low, self.high)]
        except (TypeError, ValueError):
            values = []
        if len(values) != 4 or any(v.ndim != 1 for v in values) or len({v.size for v in values}) != 1:
            return ["quality_map: scores, dice, low and high must be non-empty lists of equal length"]
        if values[0].size == 0:
            return ["quality_map: scores, dice, low and high must be non-empty lists of equal length"]
        if not all(np.isfinite(v).all() for v in values):
            return ["quality_map: every knot value must be a finite number"]
        scores, dice, low, high = values
        if np.any(np.diff(scores) <= 0):
            problems.append("quality_map: scores must be strictly increasing")
        if np.any(np.diff(dice) < 0):
            problems.append("quality_map: dice must be non-decreasing (a monotone map)")
        if min(dice.min(), low.min()) < 0 or max(dice.max(), high.max()) > 1:
            problems.append("quality_map: dice, low and high must lie in [0, 1]")
        if np.any(low > dice) or np.any(dice > high):
            problems.append("quality_map: each knot needs low <= dice <= high")
        if not isinstance(self.score, str) or not self.score:
            problems.append("quality_map: score must name the image-level score it maps")
        return problems

    def estimate(self, score: float) -> DiceEstimate | None:
        """The estimated Dice for one score value; None when the score is undefined."""
        if score is None or not math.isfinite(score):
            return None
        knots = np.asarray(self.scores, float)
        value, low, high = (
            float(np.interp(score, knots, np.asarray(v, float))) for v in (self.dice, self.low, self.high)
        )
        return DiceEstimate(value, low, high, self.score)


def calibration_problems(decision_score: Any, quality_map: Any) -> list[str]:
    """Metadata checks of ``decision_score`` and ``quality_map`` (a plain document: usable by any reader)."""
    from .decision_scores import is_known

    problems = []
    if not is_known(decision_score):
        problems.append(f"decision_score {decision_score!r} is not an aula_norm_* score")
    if quality_map is None:
        return problems
    if not isinstance(quality_map, dict):
        return problems + ["quality_map must be null or an object"]
    try:
        quality = QualityMap.from_dict(quality_map)
    except TypeError as error:
        return problems + [f"quality_map is malformed ({error})"]
    problems += quality.problems()
    if quality.score != decision_score:
        problems.append(f"quality_map maps {quality.score!r}, not the decision score {decision_score!r}")
    return problems


def quality_map_of(metadata: Any) -> QualityMap | None:
    """The model's quality map (``metadata.quality_map``, a plain dict in the JSON), or None."""
    document = getattr(metadata, "quality_map", None)
    return QualityMap.from_dict(document) if document else None


def describe(estimate: DiceEstimate | None, reason: str = NO_MAP_TEXT) -> str:
    """ "estimated Dice 0.84 (0.78–0.88)", or why there is none."""
    return estimate.text() if estimate is not None else reason

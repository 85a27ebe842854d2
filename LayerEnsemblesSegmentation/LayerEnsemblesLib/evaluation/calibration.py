"""Choosing the normalised-AULA threshold that decides accepted versus flagged for review.

The engine accepts a case when normalised AULA ≥ threshold and flags it otherwise. A reviewer's
question is "which threshold catches (say) 90 % of the segmentations with Dice below 0.8?". On
validation data with P such poor cases, catching ``ceil(S·P)`` of them requires a threshold above the
``ceil(S·P)``-th lowest AULA among the poor cases; the smallest such threshold flags the fewest good
cases, so it has the best specificity for that sensitivity. Any threshold strictly between that AULA
and the next higher AULA of any case gives the same validation result; the midpoint is taken so the
choice does not sit on a validation case's value.

The threshold is written into the model's metadata (``aula_threshold``), which ``segment`` and the
Slicer slider use as their default, along with what it was calibrated on (``provenance``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..contract import ModelMetadata
from ..decision_scores import decision_score_of
from ..errors import InputError
from ..quality import QualityMap
from .archive import rewrite_metadata

DECISION_SCORE = "aula_norm_union"  # the default decision score; a model may name another (decision_score)


@dataclass
class Calibration:
    threshold: float
    target_dice: float
    requested_sensitivity: float
    sensitivity: float  # flagged poor cases / poor cases, on the calibration data
    specificity: float  # accepted good cases / good cases
    poor_cases: int
    good_cases: int
    flagged_cases: int
    dropped_cases: int  # cases without a finite score or Dice
    score: str = DECISION_SCORE

    def summary(self) -> str:
        return (
            f"AULA threshold {self.threshold:.4f} ({self.score}): flags {self.flagged_cases} of "
            f"{self.poor_cases + self.good_cases} cases; sensitivity {self.sensitivity:.3f} for Dice < "
            f"{self.target_dice} ({self.poor_cases} poor cases; requested {self.requested_sensitivity}), "
            f"specificity {self.specificity:.3f} ({self.good_cases} good cases)"
        )


def flag_rates(scores, dice, threshold: float, target_dice: float) -> tuple[float, float, int]:
    """Sensitivity and specificity of "flag when score < threshold" for finding Dice < target."""
    scores = np.asarray(scores, float)
    dice = np.asarray(dice, float)
    poor = dice < target_dice
    flagged = scores < threshold
    sensitivity = float(flagged[poor].mean()) if poor.any() else float("nan")
    specificity = float((~flagged[~poor]).mean()) if (~poor).any() else float("nan")
    return sensitivity, specificity, int(flagged.sum())


def check_targets(target_dice: float, sensitivity: float) -> None:
    """Both in (0, 1]; called before any case is run, so a typo costs no evaluation."""
    if not 0 < sensitivity <= 1:
        raise InputError(f"--sensitivity {sensitivity}: must be in (0, 1]")
    if not 0 < target_dice <= 1:
        raise InputError(f"--target-dice {target_dice}: must be in (0, 1]")


def choose_threshold(
    scores, dice, target_dice: float, sensitivity: float, score: str = DECISION_SCORE
) -> Calibration:
    """The smallest threshold on ``scores`` (high = confident, in [0, 1]) reaching ``sensitivity``."""
    check_targets(target_dice, sensitivity)
    scores = np.asarray(scores, float)
    dice = np.asarray(dice, float)
    if scores.shape != dice.shape:
        raise ValueError(f"{scores.size} scores for {dice.size} Dice values")
    keep = np.isfinite(scores) & np.isfinite(dice)
    dropped = int((~keep).sum())
    scores, dice = scores[keep], dice[keep]
    poor_scores = np.sort(scores[dice < target_dice])
    if poor_scores.size == 0:
        raise InputError(
            f"no case has Dice below {target_dice} on the calibration data, so no threshold can be "
            "chosen; add synthetic shifts (--shifts all) or raise --target-dice"
        )
    needed = max(1, math.ceil(sensitivity * poor_scores.size - 1e-9))
    boundary = float(poor_scores[needed - 1])
    above = scores[scores > boundary]
    if above.size:
        threshold = (boundary + float(above.min())) / 2
    else:  # every case scores at or below the boundary: go half way to the top of the scale
        threshold = boundary + (1.0 - boundary) / 2 if boundary < 1.0 else 1.0
    threshold = float(min(max(threshold, 0.0), 1.0))
    reached, specificity, flagged = flag_rates(scores, dice, threshold, target_dice)
    return Calibration(
        threshold,
        float(target_dice),
        float(sensitivity),
        reached,
        specificity,
        int(poor_scores.size),
        int(scores.size - poor_scores.size),
        flagged,
        dropped,
        score,
    )


def write_threshold(
    model: str | Path,
    calibration: Calibration | None,
    destination: str | Path,
    overwrite: bool = False,
    data: str = "",
    quality_map: QualityMap | None = None,
    held_out: dict | None = None,
    decision_score: str | None = None,
) -> ModelMetadata:
    """Save ``model`` to ``destination`` with the calibrated threshold and/or quality map in its metadata.

    Only the engine's decision score may carry the threshold: a threshold on another score would be
    applied to the wrong number by ``segment`` and the Slicer module.
    """
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def update(metadata: ModelMetadata) -> None:
        if metadata.kind != "layer_ensemble":
            raise InputError(
                f"{model}: a {metadata.kind} model has no AULA; calibrate a layer-ensemble model"
            )
        if decision_score is not None and decision_score != decision_score_of(metadata):
            if calibration is None:
                raise InputError(
                    f"{model}: changing the decision score to {decision_score} needs a threshold for it "
                    "(--target-dice and --sensitivity)"
                )
            metadata.decision_score = decision_score
            metadata.quality_map = None  # a map of the old score would be applied to the new one
        decides_on = decision_score_of(metadata)
        for score in [c.score for c in (calibration, quality_map) if c is not None]:
            if score != decides_on:
                raise InputError(
                    f"{model}: the engine decides on {decides_on}; a threshold or quality map for {score} "
                    "would be applied to a different number, so it is not written"
                )
        metadata.provenance = dict(metadata.provenance)
        if calibration is not None:
            metadata.aula_threshold = round(calibration.threshold, 6)
            record = {
                k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in asdict(calibration).items()
            }
            record.update(data=data, date=date)
            metadata.provenance["aula_calibration"] = record
        if quality_map is not None:
            metadata.quality_map = quality_map.to_dict()
            metadata.provenance["quality_map_calibration"] = {
                "data": data,
                "date": date,
                "skip_heads": metadata.skip_heads,
                **({"held_out": held_out} if held_out else {}),
            }

    _, metadata = rewrite_metadata(model, destination, update, overwrite=overwrite)
    return metadata

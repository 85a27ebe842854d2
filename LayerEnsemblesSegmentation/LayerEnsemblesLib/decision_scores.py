"""The image-level scores the engine can decide on, by name, computed from the AULA result alone.

A model names its decision score in its metadata (``decision_score``); the accept/flag threshold, the
estimated-Dice map and the worklist order all apply to that one number, so ``calibrate`` writes
thresholds and maps only for it. Models without the field decide on ``aula_norm_union`` as before.

- ``aula_norm_union``: normalised AULA of all foreground structures as one mask (the paper's score).
- ``aula_norm_class_mean``: the mean over the foreground classes of their normalised AULA. Chosen for
  the shipped hippocampus model by nested cross-validation by case on validation data with shifts
  (docs/evaluation/hippocampus_le3d/report.md): a disagreement confined to the smaller structure is
  diluted in the union mask but not in the per-class mean.
- ``aula_norm_<class>``: one class's normalised AULA (for analysis; a model may name it too).
"""

from __future__ import annotations

import math
import re
from typing import Any

UNION_SCORE = "aula_norm_union"
CLASS_MEAN_SCORE = "aula_norm_class_mean"
DEFAULT_DECISION_SCORE = UNION_SCORE
PREFIX = "aula_norm_"


def column_name(name: str) -> str:
    """A class name as a score suffix: lower case, other characters as underscores (as in cases.csv)."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "class"


def label(score: str) -> str:
    """How a GUI or report names the score."""
    if score == UNION_SCORE:
        return "normalised union AULA"
    if score == CLASS_MEAN_SCORE:
        return "normalised AULA, mean over structures"
    return f"normalised {score[len(PREFIX) :]} AULA" if score.startswith(PREFIX) else score


def is_known(score: str) -> bool:
    return isinstance(score, str) and score.startswith(PREFIX) and len(score) > len(PREFIX)


def score_value(aula: Any, score: str) -> float:
    """The named score from an ``AulaResult`` (or its ``to_dict()``); NaN when it is undefined."""
    normalized = aula.get("normalized") if isinstance(aula, dict) else getattr(aula, "normalized", None)
    normalized = {column_name(k): v for k, v in (normalized or {}).items()}
    if score == CLASS_MEAN_SCORE:
        values = [v for k, v in normalized.items() if k != "union"]
        if not values or any(v is None or not math.isfinite(v) for v in values):
            return math.nan
        return float(sum(values) / len(values))
    if not is_known(score):
        return math.nan
    value = normalized.get(score[len(PREFIX) :])
    return math.nan if value is None else float(value)


def decision_score_of(metadata: Any) -> str:
    return getattr(metadata, "decision_score", None) or DEFAULT_DECISION_SCORE

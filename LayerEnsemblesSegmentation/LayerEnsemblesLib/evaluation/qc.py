"""The paper's quality-control curve (Fig. 2): how many poor segmentations remain after flagging.

Exactly as ``docs/method.md`` states it:

1. sort the N cases from most to least uncertain;
2. for flagged fractions f in ``linspace(0, 1, 50)``, remove the first ``floor(N·f)`` cases;
3. ``y(f)`` = (remaining cases with Dice < threshold) / N;
4. AUC = ``trapz(y, dx=1/49)``; lower is better.

References: *random* flagging, whose expected curve is ``P/N · (N − floor(N·f))/N`` for P poor cases
(a line), and *ideal* flagging by the true Dice, worst first, ``max(P − floor(N·f), 0)/N`` (a
triangle). Ties in the uncertainty are broken by the original case order (a stable sort), so the
result is deterministic. ``floor`` gets a 1e-9 guard because ``N·f`` for ``f = k/49`` is not always
exact in floating point (49 · (3/49) is 2.9999999999999996).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STEPS = 50


@dataclass
class QCCurve:
    fractions: np.ndarray  # flagged fractions, linspace(0, 1, steps)
    remaining: np.ndarray  # y(f): remaining poor cases / N
    auc: float


def flagged_fractions(steps: int = STEPS) -> np.ndarray:
    return np.linspace(0.0, 1.0, steps)


def _removed_counts(count: int, fractions: np.ndarray) -> np.ndarray:
    return np.floor(count * fractions + 1e-9).astype(int)


def _trapezoid(y: np.ndarray, steps: int) -> float:
    integrate = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 (older Slicer) has only trapz
    return float(integrate(y, dx=1.0 / (steps - 1)))


def _validate(dice: np.ndarray, uncertainty: np.ndarray | None = None) -> None:
    if dice.ndim != 1 or dice.size == 0:
        raise ValueError("the QC curve needs a non-empty 1D array of Dice values")
    if uncertainty is not None and uncertainty.shape != dice.shape:
        raise ValueError(f"{uncertainty.size} uncertainty values for {dice.size} cases")
    if np.isnan(dice).any() or (uncertainty is not None and np.isnan(uncertainty).any()):
        raise ValueError("the QC curve is undefined with NaN values; drop those cases first")


def qc_curve(uncertainty: np.ndarray, dice: np.ndarray, threshold: float, steps: int = STEPS) -> QCCurve:
    """The curve for flagging by ``uncertainty`` (higher = more uncertain; pass −AULA for AULA)."""
    uncertainty = np.asarray(uncertainty, float)
    dice = np.asarray(dice, float)
    _validate(dice, uncertainty)
    order = np.argsort(-uncertainty, kind="stable")
    poor = (dice[order] < threshold).astype(int)
    # remaining poor after removing the first r cases = poor cases among positions r..N-1
    remaining_after = np.concatenate([np.cumsum(poor[::-1])[::-1], [0]])
    fractions = flagged_fractions(steps)
    y = remaining_after[_removed_counts(dice.size, fractions)] / dice.size
    return QCCurve(fractions, y, _trapezoid(y, steps))


def random_reference(dice: np.ndarray, threshold: float, steps: int = STEPS) -> QCCurve:
    """The expected curve when the flagged cases are drawn at random."""
    dice = np.asarray(dice, float)
    _validate(dice)
    count, poor = dice.size, int((dice < threshold).sum())
    fractions = flagged_fractions(steps)
    y = poor / count * (count - _removed_counts(count, fractions)) / count
    return QCCurve(fractions, y, _trapezoid(y, steps))


def ideal_reference(dice: np.ndarray, threshold: float, steps: int = STEPS) -> QCCurve:
    """The curve of an oracle that flags the worst cases (by true Dice) first."""
    dice = np.asarray(dice, float)
    _validate(dice)
    count, poor = dice.size, int((dice < threshold).sum())
    fractions = flagged_fractions(steps)
    y = np.maximum(poor - _removed_counts(count, fractions), 0) / count
    return QCCurve(fractions, y, _trapezoid(y, steps))

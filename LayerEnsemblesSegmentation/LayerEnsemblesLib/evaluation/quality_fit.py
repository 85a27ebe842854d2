"""Fitting the estimated-Dice map (``LayerEnsemblesLib.quality``) on validation data, and checking it.

- The map is an isotonic (monotone non-decreasing) regression of Dice on the score, by the
  pool-adjacent-violators algorithm: scikit-learn is not a dependency, and PAV is a dozen lines.
  Cases with equal scores are pooled first, so the fit does not depend on their order.
- At most ``max_knots`` knots are stored (the fit evaluated at score quantiles): the metadata stays
  small and readable, and linear interpolation between knots keeps the map monotone.
- The interval at a knot is the 10th–90th percentile of the Dice of the ``neighbours`` validation cases
  whose score is closest to it, made monotone in the score like the map, and widened to contain it.
- ``cross_validate`` measures it honestly: folds by *case* (all conditions of a case in the same fold),
  fit on the other folds, mean absolute error and interval coverage on the held-out fold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..quality import QualityMap

MAX_KNOTS = 25
INTERVAL = (0.1, 0.9)


def isotonic(values, weights=None) -> np.ndarray:
    """Pool adjacent violators: the non-decreasing sequence closest to ``values`` in weighted squares."""
    values = np.asarray(values, float)
    weights = np.ones_like(values) if weights is None else np.asarray(weights, float)
    means: list[float] = []
    totals: list[float] = []
    sizes: list[int] = []
    for value, weight in zip(values, weights, strict=True):
        means.append(value)
        totals.append(weight)
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            weight_sum = totals[-2] + totals[-1]
            merged = (means[-2] * totals[-2] + means[-1] * totals[-1]) / weight_sum
            means[-2:], totals[-2:], sizes[-2:] = [merged], [weight_sum], [sizes[-2] + sizes[-1]]
    return np.repeat(means, sizes)


def isotonic_fit(scores, dice) -> tuple[np.ndarray, np.ndarray]:
    """(distinct scores ascending, fitted expected Dice at each) with equal scores pooled first."""
    scores, dice = np.asarray(scores, float), np.asarray(dice, float)
    distinct, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=dice) / counts
    return distinct, isotonic(means, counts)


def fit_quality_map(
    scores,
    dice,
    score: str,
    metric: str = "dice_mean",
    case_ids: Sequence[str] | None = None,
    max_knots: int = MAX_KNOTS,
    neighbours: int | None = None,
    interval: tuple[float, float] = INTERVAL,
    data: str = "",
) -> QualityMap:
    scores, dice = np.asarray(scores, float), np.asarray(dice, float)
    keep = np.isfinite(scores) & np.isfinite(dice)
    scores, dice = scores[keep], dice[keep]
    if scores.size < 10 or np.ptp(scores) == 0:
        raise InputError(
            f"a quality map needs at least 10 cases with different {score} values ({scores.size} given); "
            "add cases or synthetic shifts (--shifts all)"
        )
    distinct, fitted = isotonic_fit(scores, dice)
    if distinct.size <= max_knots:
        knots = distinct
    else:
        knots = np.unique(np.quantile(scores, np.linspace(0, 1, max_knots)))
    expected = np.interp(knots, distinct, fitted)
    count = neighbours or max(10, round(0.1 * scores.size))
    low, high = [], []
    for knot in knots:
        nearest = np.argsort(np.abs(scores - knot), kind="stable")[:count]
        lo, hi = np.quantile(dice[nearest], interval)
        low.append(lo)
        high.append(hi)
    low = np.minimum(isotonic(low), expected)
    high = np.maximum(isotonic(high), expected)
    cases = len(set(np.asarray(case_ids)[keep])) if case_ids is not None else int(scores.size)
    return QualityMap(
        score=score,
        scores=[round(float(v), 6) for v in knots],
        dice=[round(float(v), 4) for v in expected],
        low=[round(float(np.clip(v, 0, 1)), 4) for v in low],
        high=[round(float(np.clip(v, 0, 1)), 4) for v in high],
        metric=metric,
        interval=[float(interval[0]), float(interval[1])],
        cases=cases,
        rows=int(scores.size),
        data=data,
    )


@dataclass
class HeldOut:
    mae: float  # mean |estimated - true Dice| on held-out cases
    coverage: float  # share of held-out rows whose true Dice lies in the interval
    mae_constant: float  # the same for a constant estimate (the training folds' mean Dice)
    mean_width: float  # mean interval width
    folds: int
    cases: int
    rows: int
    fold_mae: list[float]
    fold_coverage: list[float]

    def summary(self) -> str:
        return (
            f"held-out ({self.folds}-fold by case, {self.cases} cases, {self.rows} rows): MAE "
            f"{self.mae:.3f} (constant estimate {self.mae_constant:.3f}), interval coverage "
            f"{self.coverage:.2f} (mean width {self.mean_width:.3f})"
        )


def cross_validate(case_ids, scores, dice, score: str, folds: int = 5, seed: int = 0, **fit) -> HeldOut:
    """Fit on all folds but one, estimate on the held-out fold's cases, for every fold."""
    ids, scores, dice = np.asarray(case_ids), np.asarray(scores, float), np.asarray(dice, float)
    keep = np.isfinite(scores) & np.isfinite(dice)
    ids, scores, dice = ids[keep], scores[keep], dice[keep]
    unique = np.unique(ids)
    if unique.size < folds:
        raise InputError(f"{folds}-fold cross-validation needs at least {folds} cases ({unique.size} given)")
    shuffled = np.random.default_rng(seed).permutation(unique)
    estimate, low, high, constant = (np.full(ids.size, np.nan) for _ in range(4))
    fold_mae, fold_coverage = [], []
    for held in np.array_split(shuffled, folds):
        test = np.isin(ids, held)
        quality = fit_quality_map(scores[~test], dice[~test], score, case_ids=ids[~test], **fit)
        for index in np.flatnonzero(test):
            result = quality.estimate(scores[index])
            estimate[index], low[index], high[index] = result.value, result.low, result.high
        constant[test] = dice[~test].mean()
        fold_mae.append(float(np.abs(estimate[test] - dice[test]).mean()))
        fold_coverage.append(float(((low[test] <= dice[test]) & (dice[test] <= high[test])).mean()))
    return HeldOut(
        mae=float(np.abs(estimate - dice).mean()),
        coverage=float(((low <= dice) & (dice <= high)).mean()),
        mae_constant=float(np.abs(constant - dice).mean()),
        mean_width=float((high - low).mean()),
        folds=folds,
        cases=int(unique.size),
        rows=int(ids.size),
        fold_mae=fold_mae,
        fold_coverage=fold_coverage,
    )

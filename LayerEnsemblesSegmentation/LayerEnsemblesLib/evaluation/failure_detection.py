"""Failure-detection metrics as the field reports them, with confidence intervals over cases.

The question is "does the score rank the cases a reviewer should check first?". Every metric here takes
a *confidence* (high = trust the case; pass −uncertainty for an uncertainty score) and the true quality:

- **Risk-coverage curve** (fd-shifts, ValUES): cases are accepted from the most confident down; at each
  distinct confidence value the accepted set grows by the whole group of cases with that value, so the
  result does not depend on the order of tied cases (ties handled explicitly, not by sort order). The
  curve's points are (coverage, risk) at each group's end, plus a point at coverage 0 (selective risk:
  that of the most confident group; generalised risk: 0), integrated with the trapezoid rule.
- **AURC**: area under the *selective* risk (mean risk of the accepted cases) with risk = 1 − Dice.
- **E-AURC**: AURC minus the AURC of the oracle confidence −risk (0 for a perfect ranking).
- **AUGRC** (Traub et al., NeurIPS 2024): area under the *generalised* risk (summed risk of the accepted
  cases divided by all cases), i.e. the expected risk of a case that is both accepted and failed.
- **AUROC** of the uncertainty for failure (Dice < τ), ties counting one half (Mann–Whitney).
- **QC AUC** of the paper's Fig. 2 is the AUGRC with binary risk 1[Dice < τ]: after flagging a fraction
  f the curve shows the accepted poor cases over all cases, which is the generalised risk at coverage
  1 − f. Its references are exact: random flagging P / (2N), ideal flagging P² / (2N²) for P poor cases.

Statistics over cases: a case seen under 17 acquisition conditions is one case, not 17. Confidence
intervals come from ``scipy.stats.bootstrap`` resampling *case ids* (every condition of a drawn case
comes along), percentile intervals, a fixed seed so a rebuilt report is identical.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

METRICS = ("auroc", "aurc", "eaurc", "augrc", "augrc_binary", "spearman")
LOWER_IS_BETTER = {"aurc": True, "eaurc": True, "augrc": True, "augrc_binary": True}
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def _arrays(confidence, risk) -> tuple[np.ndarray, np.ndarray]:
    confidence = np.asarray(confidence, float)
    risk = np.asarray(risk, float)
    if confidence.ndim != 1 or confidence.shape != risk.shape or confidence.size == 0:
        raise ValueError(
            f"{confidence.size} confidences for {risk.size} risks: need equal, non-empty 1D arrays"
        )
    if not (np.isfinite(confidence).all() and np.isfinite(risk).all()):
        raise ValueError("failure-detection metrics are undefined with NaN values; drop those cases first")
    return confidence, risk


def risk_coverage(confidence, risk, generalized: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(coverages, risks) in ascending coverage, one point per distinct confidence and one at 0."""
    confidence, risk = _arrays(confidence, risk)
    count = confidence.size
    order = np.argsort(-confidence, kind="stable")
    confidence, risk = confidence[order], risk[order]
    accepted_risk = np.cumsum(risk)
    group_end = np.flatnonzero(np.append(confidence[1:] != confidence[:-1], True))
    accepted = group_end + 1
    coverages = accepted / count
    risks = accepted_risk[group_end] / (count if generalized else accepted)
    start = 0.0 if generalized else risks[0]
    return np.concatenate([[0.0], coverages]), np.concatenate([[start], risks])


def _area(coverages: np.ndarray, risks: np.ndarray) -> float:
    return float(np.sum(np.diff(coverages) * (risks[1:] + risks[:-1]) / 2))


def aurc(confidence, risk) -> float:
    return _area(*risk_coverage(confidence, risk))


def eaurc(confidence, risk) -> float:
    """AURC minus the oracle's (confidence −risk): what the ranking loses against a perfect one."""
    risk = np.asarray(risk, float)
    return aurc(confidence, risk) - aurc(-risk, risk)


def augrc(confidence, risk) -> float:
    return _area(*risk_coverage(confidence, risk, generalized=True))


def auroc_failure(confidence, failed) -> float:
    """P(a failed case is less confident than a good one), ties one half; NaN without both kinds."""
    from scipy import stats

    confidence, failed = _arrays(confidence, np.asarray(failed, float))
    failed = failed.astype(bool)
    positives, negatives = int(failed.sum()), int((~failed).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = stats.rankdata(-confidence)  # rank 1 = most confident; a failure should rank high
    return float((ranks[failed].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def binary_references(dice, threshold: float) -> tuple[float, float]:
    """Exact AUGRC of random and of ideal flagging with binary risk 1[Dice < threshold]."""
    dice = np.asarray(dice, float)
    share = float((dice < threshold).mean())
    return share / 2, share**2 / 2


def spearman_rho(confidence, dice) -> float:
    from scipy import stats

    confidence, dice = _arrays(confidence, dice)
    if np.ptp(confidence) == 0 or np.ptp(dice) == 0:
        return float("nan")
    return float(stats.spearmanr(confidence, dice).statistic)


def failure_metrics(confidence, dice, threshold: float) -> dict[str, float]:
    """Every metric of ``METRICS`` for one score on one set of cases (risk = 1 − Dice)."""
    confidence, dice = _arrays(confidence, dice)
    risk = 1.0 - dice
    failed = dice < threshold
    return {
        "auroc": auroc_failure(confidence, failed),
        "aurc": aurc(confidence, risk),
        "eaurc": eaurc(confidence, risk),
        "augrc": augrc(confidence, risk),
        "augrc_binary": augrc(confidence, failed.astype(float)),
        "spearman": spearman_rho(confidence, dice),
    }


# ------------------------------------------------------------------------------------------ bootstrap


@dataclass
class Estimate:
    value: float
    low: float
    high: float

    def text(self, digits: int = 3) -> str:
        if not np.isfinite(self.value):
            return "–"
        if not (np.isfinite(self.low) and np.isfinite(self.high)):
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def case_bootstrap(
    case_ids: Sequence[str],
    statistic: Callable[[np.ndarray], np.ndarray],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> list[Estimate]:
    """Point values and percentile intervals of a vector ``statistic(rows)`` over cases.

    ``statistic`` receives the row indices of a resample (each drawn case's rows, a case drawn twice
    contributes its rows twice) and returns one value per metric. Cases, not rows, are resampled.
    """
    from scipy import stats

    ids = np.asarray(case_ids)
    unique, inverse = np.unique(ids, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == k) for k in range(unique.size)]
    point = np.asarray(statistic(np.arange(ids.size)), float)

    def on_cases(drawn: np.ndarray) -> np.ndarray:
        values = np.asarray(statistic(np.concatenate([rows_of[int(k)] for k in drawn])), float)
        return np.where(np.isfinite(values), values, np.nan)

    if unique.size < 2:
        return [Estimate(float(v), float("nan"), float("nan")) for v in point]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        # a degenerate resampling distribution (few cases, a constant metric) is a valid answer here
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            (np.arange(unique.size),),
            on_cases,
            vectorized=False,
            n_resamples=resamples,
            method="percentile",
            confidence_level=level,
            rng=np.random.default_rng(seed),
        )
    low = np.atleast_1d(result.confidence_interval.low)
    high = np.atleast_1d(result.confidence_interval.high)
    return [Estimate(float(v), float(lo), float(hi)) for v, lo, hi in zip(point, low, high, strict=True)]


def bootstrap_metrics(
    case_ids: Sequence[str], confidence, dice, threshold: float, resamples: int = BOOTSTRAP_RESAMPLES
) -> dict[str, Estimate]:
    """``failure_metrics`` with case-bootstrap intervals."""
    confidence, dice = _arrays(confidence, dice)

    def statistic(rows: np.ndarray) -> np.ndarray:
        values = failure_metrics(confidence[rows], dice[rows], threshold)
        return np.array([values[m] for m in METRICS])

    return dict(zip(METRICS, case_bootstrap(case_ids, statistic, resamples), strict=True))


def bootstrap_difference(
    case_ids: Sequence[str],
    confidence_a,
    confidence_b,
    dice_a,
    dice_b,
    threshold: float,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Estimate]:
    """Metric of score A minus metric of score B on the same (case, condition) rows, paired by case."""
    confidence_a, dice_a = _arrays(confidence_a, dice_a)
    confidence_b, dice_b = _arrays(confidence_b, dice_b)

    def statistic(rows: np.ndarray) -> np.ndarray:
        a = failure_metrics(confidence_a[rows], dice_a[rows], threshold)
        b = failure_metrics(confidence_b[rows], dice_b[rows], threshold)
        return np.array([a[m] - b[m] for m in METRICS])

    return dict(zip(METRICS, case_bootstrap(case_ids, statistic, resamples), strict=True))


def spearman_interval(
    case_ids: Sequence[str], score, target, resamples: int = BOOTSTRAP_RESAMPLES
) -> Estimate:
    """Spearman ρ over all rows with a case-bootstrap interval (rows with NaN dropped first)."""
    score, target = np.asarray(score, float), np.asarray(target, float)
    keep = np.isfinite(score) & np.isfinite(target)
    ids, score, target = np.asarray(case_ids)[keep], score[keep], target[keep]
    if ids.size < 3:
        return Estimate(float("nan"), float("nan"), float("nan"))
    return case_bootstrap(ids, lambda rows: np.array([spearman_rho(score[rows], target[rows])]), resamples)[0]

"""Statistics for Tables 1 and 2, from scipy.stats (an optional extra, imported only when used).

Degenerate inputs give NaN instead of an exception or a warning, because a report over many methods
and scores always contains some: a plain network's mutual information is identically 0, so its rank
correlation is undefined, and two methods that agree on every case have no paired difference to test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TestResult:
    statistic: float
    pvalue: float
    count: int  # pairs that entered the computation (NaN pairs dropped)


def _finite_pairs(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples of different lengths ({x.size} and {y.size})")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def spearman(score, target) -> TestResult:
    """Spearman's rank correlation ρ (ties get average ranks) and its two-sided p-value."""
    from scipy import stats

    x, y = _finite_pairs(score, target)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return TestResult(float("nan"), float("nan"), int(x.size))
    result = stats.spearmanr(x, y)
    return TestResult(float(result.statistic), float(result.pvalue), int(x.size))


def paired_wilcoxon(values, reference) -> TestResult:
    """Two-sided Wilcoxon signed-rank test of ``values`` against ``reference``, paired by case.

    Zero differences are dropped (Wilcoxon's original treatment); when every difference is zero the
    methods are indistinguishable on these cases and the p-value is 1.
    """
    from scipy import stats

    x, y = _finite_pairs(values, reference)
    if x.size == 0:
        return TestResult(float("nan"), float("nan"), 0)
    if np.all(x - y == 0):
        return TestResult(0.0, 1.0, int(x.size))
    result = stats.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
    return TestResult(float(result.statistic), float(result.pvalue), int(x.size))


def mean_sd(values) -> tuple[float, float, int]:
    """Mean and sample standard deviation (ddof 1) over the finite values, and their count."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan"), 0
    sd = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return float(values.mean()), sd, int(values.size)

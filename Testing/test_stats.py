"""Spearman and paired Wilcoxon on hand-computed cases, and the degenerate cases a report meets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from LayerEnsemblesLib.evaluation import stats


def test_spearman_on_known_orderings():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert stats.spearman(x, [10, 20, 30, 40, 50]).statistic == pytest.approx(1.0)
    assert stats.spearman(x, [5, 4, 3, 2, 1]).statistic == pytest.approx(-1.0)
    # rank differences -1, 1, -1, 1, 0: rho = 1 - 6 * 4 / (5 * (25 - 1)) = 0.8
    assert stats.spearman(x, [2, 1, 4, 3, 5]).statistic == pytest.approx(0.8)
    # monotone but non-linear: ranks only
    assert stats.spearman(x, np.exp(x)).statistic == pytest.approx(1.0)


def test_spearman_drops_nan_pairs_and_is_nan_for_constant_scores():
    result = stats.spearman([1, 2, np.nan, 3, 4], [1, 2, 100, 3, 4])
    assert result.statistic == pytest.approx(1.0) and result.count == 4
    constant = stats.spearman([0, 0, 0, 0], [0.1, 0.5, 0.7, 0.9])  # a plain network's MI
    assert math.isnan(constant.statistic) and math.isnan(constant.pvalue)


def test_paired_wilcoxon_hand_computed():
    # differences 1..5, all positive: W- = 0; exact two-sided p = 2 / 2^5
    result = stats.paired_wilcoxon([2, 4, 6, 8, 10], [1, 2, 3, 4, 5])
    assert result.statistic == 0.0
    assert result.pvalue == pytest.approx(2 / 32)
    # differences 1, -2, 3, 4, 5: W- = 2; subsets of ranks with sum <= 2: {}, {1}, {2} -> p = 2 * 3 / 32
    result = stats.paired_wilcoxon([2, 0, 6, 8, 10], [1, 2, 3, 4, 5])
    assert result.statistic == 2.0
    assert result.pvalue == pytest.approx(6 / 32)


def test_paired_wilcoxon_identical_methods():
    result = stats.paired_wilcoxon([0.8, 0.9, 0.7], [0.8, 0.9, 0.7])
    assert result.pvalue == 1.0


def test_mean_sd():
    mean, sd, count = stats.mean_sd([1.0, 2.0, 3.0, np.nan])
    assert (mean, count) == (2.0, 3)
    assert sd == pytest.approx(1.0)

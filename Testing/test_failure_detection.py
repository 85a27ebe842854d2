"""Failure-detection metrics against hand-computed values: ranking, ties, all-good and all-poor sets."""

from __future__ import annotations

import numpy as np
import pytest
from LayerEnsemblesLib.evaluation import failure_detection as fd
from LayerEnsemblesLib.evaluation import qc

# three cases, risk 1 - Dice = 0, 0.5, 1
DICE = np.array([1.0, 0.5, 0.0])
RIGHT = np.array([3.0, 2.0, 1.0])  # most confident is the best case
WRONG = -RIGHT


def test_risk_coverage_points_by_hand():
    coverages, risks = fd.risk_coverage(RIGHT, 1 - DICE)
    assert coverages.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert risks.tolist() == pytest.approx([0, 0, 0.25, 0.5])  # mean risk of the accepted cases
    coverages, risks = fd.risk_coverage(RIGHT, 1 - DICE, generalized=True)
    assert risks.tolist() == pytest.approx([0, 0, 0.5 / 3, 0.5])  # summed risk over all cases


def test_aurc_eaurc_augrc_by_hand():
    # trapezoids: [1/3, 2/3]: (0 + 0.25)/2 / 3; [2/3, 1]: (0.25 + 0.5)/2 / 3
    assert fd.aurc(RIGHT, 1 - DICE) == pytest.approx(1 / 24 + 1 / 8)
    assert fd.eaurc(RIGHT, 1 - DICE) == pytest.approx(0.0)
    # reversed ranking: selective risks 1, 0.75, 0.5 at coverages 1/3, 2/3, 1 and 1 at 0
    worst = 1 / 3 + (1 + 0.75) / 6 + (0.75 + 0.5) / 6
    assert fd.aurc(WRONG, 1 - DICE) == pytest.approx(worst)
    assert fd.eaurc(WRONG, 1 - DICE) == pytest.approx(worst - 1 / 6)
    # generalised risks 0, 1/6, 1/2 at coverages 1/3, 2/3, 1 and 0 at 0
    assert fd.augrc(RIGHT, 1 - DICE) == pytest.approx((1 / 6) / 6 + (1 / 6 + 0.5) / 6)


def test_ties_enter_together_whatever_their_order():
    risk = np.array([0.0, 1.0, 0.2, 0.4])
    tied = np.array([1.0, 1.0, 0.5, 0.5])
    # groups: {0, 1} (mean risk 0.5) at coverage 1/2, then all (0.4) at 1; and (0, 0.5)
    assert fd.aurc(tied, risk) == pytest.approx(0.5 * 0.5 + (0.5 + 0.4) / 2 * 0.5)
    for permutation in ([1, 0, 3, 2], [3, 2, 1, 0], [2, 0, 3, 1]):
        assert fd.aurc(tied[permutation], risk[permutation]) == pytest.approx(fd.aurc(tied, risk))
        assert fd.augrc(tied[permutation], risk[permutation]) == pytest.approx(fd.augrc(tied, risk))
    constant = np.zeros(4)  # a constant score cannot rank: one point at full coverage
    assert fd.aurc(constant, risk) == pytest.approx(risk.mean())
    assert fd.augrc(constant, risk) == pytest.approx(risk.mean() / 2)


def test_auroc_with_ties_counts_one_half():
    confidence = np.array([0.9, 0.8, 0.8, 0.1])
    failed = np.array([False, True, False, True])
    # pairs (failure, good) where the failure is less confident: (0.8 vs 0.9) 1, (0.8 vs 0.8) 0.5,
    # (0.1 vs 0.9) 1, (0.1 vs 0.8) 1 -> 3.5 / 4
    assert fd.auroc_failure(confidence, failed) == pytest.approx(3.5 / 4)
    assert fd.auroc_failure(-confidence, failed) == pytest.approx(0.5 / 4)
    assert np.isnan(fd.auroc_failure(confidence, np.zeros(4, bool)))


def test_all_good_and_all_poor_sets():
    confidence = np.array([0.3, 0.9, 0.5])
    good = fd.failure_metrics(confidence, np.array([0.9, 0.85, 0.95]), threshold=0.8)
    assert np.isnan(good["auroc"])
    assert good["augrc_binary"] == 0.0 and fd.binary_references([0.9, 0.85, 0.95], 0.8) == (0.0, 0.0)
    poor = fd.failure_metrics(confidence, np.array([0.1, 0.2, 0.3]), threshold=0.8)
    assert np.isnan(poor["auroc"])
    # every accepted case fails: generalised risk = coverage, area 1/2 = random = ideal
    assert poor["augrc_binary"] == pytest.approx(0.5)
    assert fd.binary_references([0.1, 0.2, 0.3], 0.8) == (pytest.approx(0.5), pytest.approx(0.5))


def test_qc_auc_is_the_binary_augrc():
    rng = np.random.default_rng(3)
    dice = rng.uniform(0.4, 1.0, 49)  # N = 49: the paper's 50 flagged fractions hit every case boundary
    confidence = dice + rng.normal(0, 0.2, 49)
    curve = qc.qc_curve(-confidence, dice, 0.8)
    assert fd.augrc(confidence, (dice < 0.8).astype(float)) == pytest.approx(curve.auc)
    random, ideal = fd.binary_references(dice, 0.8)
    assert random == pytest.approx(qc.random_reference(dice, 0.8).auc)
    assert ideal == pytest.approx(qc.ideal_reference(dice, 0.8).auc)


def test_bootstrap_resamples_cases_not_rows():
    # two cases with 3 conditions each; a statistic that counts rows sees multiples of 3 only
    ids = np.array(["a", "a", "a", "b", "b", "b"])
    seen = set()

    def rows(index):
        seen.add(index.size)
        return np.array([float(index.size)])

    (estimate,) = fd.case_bootstrap(ids, rows, resamples=50)
    assert estimate.value == 6 and seen == {6}
    first_case = fd.case_bootstrap(ids, lambda index: np.array([float((index < 3).mean())]), resamples=200)[0]
    assert first_case.low == 0.0 and first_case.high == 1.0  # all of a, half and half, or all of b


def test_bootstrap_metrics_interval_contains_the_point_and_difference_of_identical_is_zero():
    rng = np.random.default_rng(0)
    ids = np.repeat([f"case{k}" for k in range(20)], 3)
    dice = rng.uniform(0.3, 1.0, ids.size)
    confidence = dice + rng.normal(0, 0.15, ids.size)
    estimates = fd.bootstrap_metrics(ids, confidence, dice, 0.8, resamples=200)
    for name in fd.METRICS:
        assert estimates[name].low <= estimates[name].value <= estimates[name].high, name
    assert estimates["auroc"].value > 0.7 and estimates["spearman"].value > 0.5
    same = fd.bootstrap_difference(ids, confidence, confidence, dice, dice, 0.8, resamples=50)
    assert all(same[m].value == 0 and same[m].low == 0 and same[m].high == 0 for m in fd.METRICS)


def test_nan_and_length_mismatch_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        fd.aurc([0.1, np.nan], [0.1, 0.2])
    with pytest.raises(ValueError, match="2 confidences for 3 risks"):
        fd.augrc([0.1, 0.2], [0.1, 0.2, 0.3])

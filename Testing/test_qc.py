"""The quality-control curve and its references against hand-computed small cases."""

from __future__ import annotations

import numpy as np
import pytest
from LayerEnsemblesLib.evaluation import qc, scores

# four cases, two of them poor (Dice < 0.8): cases 1 and 3
DICE = np.array([0.9, 0.5, 0.95, 0.6])


def _expected_y(remaining_by_removed: list[float]) -> np.ndarray:
    """y(f) from the remaining poor count after removing r = floor(4 f) cases, f = k/49.

    For N = 4: r = 0 for k = 0..12, 1 for k = 13..24, 2 for k = 25..36, 3 for k = 37..48, 4 for k = 49.
    """
    counts = [13, 12, 12, 12, 1]
    return np.repeat(np.array(remaining_by_removed) / 4, counts)


def test_removed_counts_are_exact_floors():
    # 49 * (3/49) is 2.9999999999999996 in floating point; the paper's floor(N f) is 3
    assert qc._removed_counts(49, qc.flagged_fractions())[3] == 3
    expected = [0] * 13 + [1] * 12 + [2] * 12 + [3] * 12 + [4]
    assert qc._removed_counts(4, qc.flagged_fractions()).tolist() == expected


def test_perfect_ranking_equals_ideal_reference():
    uncertainty = np.array([0.1, 0.9, 0.2, 0.5])  # flags case 1, then 3 (both poor), then 2, then 0
    curve = qc.qc_curve(uncertainty, DICE, 0.8)
    expected = _expected_y([2, 1, 0, 0, 0])
    np.testing.assert_allclose(curve.remaining, expected)
    # trapezoid with dx = 1/49: (13 * 0.5 + 12 * 0.25 - 0.5 / 2) / 49
    assert curve.auc == pytest.approx(9.25 / 49)
    ideal = qc.ideal_reference(DICE, 0.8)
    np.testing.assert_allclose(ideal.remaining, expected)
    assert ideal.auc == pytest.approx(9.25 / 49)
    np.testing.assert_allclose(curve.fractions, np.linspace(0, 1, 50))


def test_worst_ranking():
    uncertainty = np.array([0.9, 0.1, 0.8, 0.2])  # flags the good cases first
    curve = qc.qc_curve(uncertainty, DICE, 0.8)
    np.testing.assert_allclose(curve.remaining, _expected_y([2, 2, 2, 1, 0]))
    assert curve.auc == pytest.approx((13 * 0.5 + 12 * 0.5 + 12 * 0.5 + 12 * 0.25 - 0.25) / 49)


def test_random_reference_is_the_expected_line():
    random = qc.random_reference(DICE, 0.8)
    # P/N * (N - r)/N with P = 2, N = 4
    np.testing.assert_allclose(random.remaining, _expected_y([2, 1.5, 1, 0.5, 0]))
    assert random.auc == pytest.approx((13 * 0.5 + 12 * 0.375 + 12 * 0.25 + 12 * 0.125 - 0.25) / 49)


def test_random_flagging_averages_to_the_random_reference():
    rng = np.random.default_rng(0)
    dice = rng.random(20)
    mean_auc = np.mean([qc.qc_curve(rng.random(20), dice, 0.5).auc for _ in range(3000)])
    assert mean_auc == pytest.approx(qc.random_reference(dice, 0.5).auc, abs=2e-3)


def test_ties_keep_case_order():
    # equal uncertainty: the stable sort keeps the original order (poor case 1 before good case 2)
    curve = qc.qc_curve(np.zeros(4), DICE, 0.8)
    np.testing.assert_allclose(curve.remaining, _expected_y([2, 2, 1, 1, 0]))


def test_no_poor_cases_gives_a_zero_curve():
    curve = qc.qc_curve(np.array([0.3, 0.1]), np.array([0.9, 0.95]), 0.8)
    assert curve.auc == 0.0 and not curve.remaining.any()


def test_aula_is_ranked_by_its_negative():
    aula = np.array([7.8, 3.0, 7.9, 5.0])  # low AULA = uncertain
    curve = qc.qc_curve(scores.uncertainty("aula_raw_union", aula), DICE, 0.8)
    assert curve.auc == pytest.approx(9.25 / 49)
    assert scores.higher_is_uncertain("entropy_sum")
    assert not scores.higher_is_uncertain("aula_norm_anterior")


def test_invalid_input():
    with pytest.raises(ValueError, match="NaN"):
        qc.qc_curve(np.array([0.1, np.nan]), np.array([0.9, 0.5]), 0.8)
    with pytest.raises(ValueError, match="uncertainty values"):
        qc.qc_curve(np.array([0.1]), np.array([0.9, 0.5]), 0.8)

"""Tests that bite: each one fails on a deliberate bug that the rest of the suite let through.

Every test names the bug it was checked against (the bug was applied by hand, the test failed, the
bug was reverted). Expected values are computed here from the definitions, not copied from a run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from engine_models import sphere_image
from LayerEnsemblesLib.errors import Cancelled
from LayerEnsemblesLib.evaluation import calibration, metrics, qc
from LayerEnsemblesLib.inference import Predictor
from LayerEnsemblesLib.inference.sliding_window import (
    GAUSSIAN_SIGMA_FRACTION,
    MIN_RELATIVE_WEIGHT,
    plan_windows,
    run_windows,
)


def _gaussian(position: int, length: int) -> float:
    """The window weight by its definition: a Gaussian of sigma = length / 8 around the window centre."""
    sigma = length * GAUSSIAN_SIGMA_FRACTION
    return max(math.exp(-0.5 * ((position - (length - 1) / 2) / sigma) ** 2), MIN_RELATIVE_WEIGHT)


def test_overlapping_windows_blend_with_gaussian_weights():
    """Bug: uniform instead of Gaussian window weights (``gaussian_profile`` returning ones)."""
    volume = torch.zeros((1, 8, 8, 24))
    plan = plan_windows((8, 8, 24), (8, 8, 16), (1, 1, 1), 0.5, slicewise=False)
    assert [start[2] for start in plan.starts] == [0, 8]
    seen = []

    def forward(batch: torch.Tensor) -> list[torch.Tensor]:  # window i answers the constant 10 * i
        seen.append(len(seen))
        logits = torch.zeros((1, 2, *batch.shape[2:]))
        logits[:, 0] = 10.0 * seen[-1]
        return [logits]

    blended = run_windows(forward, volume, plan, [(1, 1, 1)], 2, slicewise=False, source="test")[0]
    for x in range(8, 16):  # covered by window 0 (at x) and window 1 (at x - 8)
        first, second = _gaussian(x, 16), _gaussian(x - 8, 16)
        expected = (0.0 * first + 10.0 * second) / (first + second)
        assert float(blended[0, 4, 4, x]) == pytest.approx(expected, rel=1e-5), x
    assert float(blended[0, 4, 4, 9]) < 3.0  # near window 0's centre, window 0 (value 0) dominates


@pytest.fixture(scope="module")
def prediction(tiny_model_file):
    image = sphere_image(size=(24, 20, 16), radius_mm=6.0, noise=0.3)[0]
    return Predictor(tiny_model_file, device="cpu").predict(
        image, head_range=(0, 6), maps=("agreement", "entropy", "variance")
    ), image


def test_a_recombination_cancelled_half_way_leaves_no_stale_sums(prediction, tiny_model_file):
    """Bug: the running sums are not reset after an exception during recombination."""
    first, image = prediction
    calls = []

    def cancel_on_the_second_head() -> bool:
        calls.append(1)
        return len(calls) >= 2  # one head already subtracted from the sums when the cancel arrives

    with pytest.raises(Cancelled):
        first.recombine(head_range=(2, 6), cancel=cancel_on_the_second_head)
    assert len(calls) >= 2
    again = first.recombine(head_range=(2, 6))
    fresh = Predictor(tiny_model_file, device="cpu").predict(
        image, head_range=(2, 6), maps=("agreement", "entropy", "variance")
    )
    for name in ("agreement", "entropy", "variance"):
        np.testing.assert_array_equal(_array(again.maps[name]), _array(fresh.maps[name]), err_msg=name)
    np.testing.assert_array_equal(_array(again.segmentation), _array(fresh.segmentation))
    assert again.aula.normalized == fresh.aula.normalized


def _array(image):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)


def test_recombine_without_a_threshold_keeps_the_one_given(tiny_model_file):
    """Bug: ``recombine(threshold=None)`` falls back to the model's default instead of the given one."""
    image = sphere_image(size=(16, 16, 16), radius_mm=5.0)[0]
    given = Predictor(tiny_model_file, device="cpu").predict(image, threshold=0.123)
    assert (given.threshold, given.threshold_source) == (0.123, "argument")
    for recombined in (given.recombine(skip_heads=1), given.recombine(head_range=(1, 5), maps="entropy")):
        assert (recombined.threshold, recombined.threshold_source) == (0.123, "argument")
        assert recombined.to_report()["threshold"] == 0.123


def test_calibration_ceiling_is_not_pushed_up_by_rounding():
    """Bug: dropping the 1e-9 guard in ``ceil(sensitivity * poor)``: 0.28 * 25 is 7.000000000000001."""
    assert 0.28 * 25 > 7  # the floating-point fact the guard exists for
    poor = [round(0.02 * i, 2) for i in range(1, 26)]  # 0.02, 0.04, ..., 0.50
    good = [0.97, 0.99]
    result = calibration.choose_threshold(poor + good, [0.5] * 25 + [0.9] * 2, 0.8, 0.28)
    # the 7th lowest poor score (0.14) must be flagged, and the next score of any case is 0.16
    assert result.threshold == pytest.approx(0.15)
    assert result.sensitivity == pytest.approx(7 / 25)
    assert result.flagged_cases == 7


def test_qc_curve_breaks_ties_by_case_order_beyond_sixteen_cases():
    """Bug: an unstable sort in the QC curve (numpy's default quicksort reorders ties above 16 items)."""
    count = 40
    uncertainty = np.random.default_rng(0).integers(0, 3, count).astype(float)  # three levels, many ties
    dice = np.tile([0.5, 0.9], count // 2)  # poor, good, poor, good, ... in case order
    curve = qc.qc_curve(uncertainty, dice, 0.8)
    # the definition: most uncertain first, ties in case order (Python's sort is guaranteed stable)
    order = sorted(range(count), key=lambda i: -uncertainty[i])
    poor_in_order = [dice[i] < 0.8 for i in order]
    removed = np.floor(count * qc.flagged_fractions() + 1e-9).astype(int)
    expected = np.array([sum(poor_in_order[r:]) for r in removed]) / count
    np.testing.assert_array_equal(curve.remaining, expected)


def test_empty_flag_only_when_the_prediction_misses_a_present_structure():
    """Bug: the empty-mask flag set when both masks are empty (a structure absent and correctly not found)."""
    reference = np.zeros((12, 12, 12), np.uint8)
    reference[3:8, 3:8, 3:8] = 1  # class 1 present, class 2 absent
    prediction = reference.copy()
    row = metrics.segmentation_metrics(prediction, reference, (1.0, 1.0, 1.0), {"one": 1, "two": 2})
    assert (row["empty_one"], row["empty_two"], row["empty_union"]) == (0.0, 0.0, 0.0)
    assert (row["dice_two"], row["hd95_two"], row["mhd_two"]) == (1.0, 0.0, 0.0)
    nothing = np.zeros_like(reference)
    both_empty = metrics.segmentation_metrics(nothing, nothing, (1.0, 1.0, 1.0), {"one": 1})
    assert (both_empty["empty_one"], both_empty["empty_union"]) == (0.0, 0.0)
    missed = metrics.segmentation_metrics(nothing, reference, (1.0, 1.0, 1.0), {"one": 1})
    assert (missed["empty_one"], missed["empty_union"]) == (1.0, 1.0)

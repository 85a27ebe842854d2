"""AULA, the agreement curve and the voxel maps against hand-computed cases, and the streaming reduction
against the reference definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from LayerEnsemblesLib.inference.reduction import HeadStream
from LayerEnsemblesLib.networks import upsample_logits
from LayerEnsemblesLib.uncertainty import (
    agreement_curve,
    aula,
    aula_from_confusions,
    aula_from_labels,
    dice,
    ensemble_maps,
    pair_labels,
)

BINARY = {"background": 0, "tumour": 1}
THREE = {"background": 0, "left": 1, "right": 2}


def assert_curves_close(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        assert actual[key] == pytest.approx(expected[key]), key


def test_dice_by_hand_and_both_empty_pairs_agree():
    assert dice(np.array([1, 1, 0, 0]), np.array([1, 1, 1, 0])) == pytest.approx(0.8)  # 2*2 / (2+3)
    assert dice(np.zeros(5), np.zeros(5)) == 1.0
    assert dice(np.zeros(5), np.array([0, 0, 1, 0, 0])) == 0.0


def test_trapezoid_with_unit_spacing_and_normalisation():
    raw, normalized = aula([1.0, 0.5, 1.0])
    assert raw == pytest.approx(1.5)  # (1 + .5)/2 + (.5 + 1)/2
    assert normalized == pytest.approx(0.75)
    # the paper's scale: 9 pairs of perfect agreement give 8
    assert aula([1.0] * 9) == (pytest.approx(8.0), pytest.approx(1.0))


def test_one_pair_normalises_to_its_dice_and_no_pair_is_undefined():
    assert aula([0.6]) == (0.0, 0.6)
    raw, normalized = aula([])
    assert math.isnan(raw) and math.isnan(normalized)


def test_binary_case_by_hand_and_union_equals_the_class():
    heads = [np.array([1, 1, 0, 0]), np.array([1, 1, 1, 0]), np.array([1, 1, 1, 0])]
    result = aula_from_labels(heads, BINARY, ["encoder0", "encoder1", "final"])
    assert result.curves["tumour"] == pytest.approx([0.8, 1.0])
    assert result.raw["tumour"] == pytest.approx(0.9)
    assert result.normalized["tumour"] == pytest.approx(0.9)  # 0.9 / (2 - 1)
    assert result.curves["union"] == result.curves["tumour"]
    assert result.normalized["union"] == result.normalized["tumour"]
    assert result.pair_labels == ["encoder1/encoder0", "final/encoder1"]
    assert not result.empty_foreground


def test_multiclass_case_by_hand_per_class_and_union():
    heads = [
        np.array([0, 1, 1, 2, 2, 0]),
        np.array([0, 1, 2, 2, 2, 0]),
        np.array([0, 2, 2, 2, 0, 0]),
    ]
    result = aula_from_labels(heads, THREE)
    # left: {1,2} vs {1} -> 2/3; {1} vs {} -> 0
    assert result.curves["left"] == pytest.approx([2 / 3, 0.0])
    # right: {3,4} vs {2,3,4} -> 4/5; {2,3,4} vs {1,2,3} -> 4/6
    assert result.curves["right"] == pytest.approx([0.8, 4 / 6])
    # union: {1,2,3,4} vs {1,2,3,4} -> 1; {1,2,3,4} vs {1,2,3} -> 6/7
    assert result.curves["union"] == pytest.approx([1.0, 6 / 7])
    assert result.raw["union"] == pytest.approx((1 + 6 / 7) / 2)
    assert result.normalized["right"] == pytest.approx((0.8 + 4 / 6) / 2)


def test_empty_masks_agree_but_are_flagged():
    heads = [np.zeros(6, int)] * 4
    result = aula_from_labels(heads, THREE)
    assert result.curves["union"] == [1.0, 1.0, 1.0]
    assert result.raw["union"] == pytest.approx(2.0)
    assert result.normalized["union"] == pytest.approx(1.0)
    assert result.empty_foreground
    assert result.empty_classes == ["left", "right"]


def test_one_class_empty_is_listed_without_the_foreground_flag():
    heads = [np.array([0, 1, 1]), np.array([0, 1, 0])]
    result = aula_from_labels(heads, THREE)
    assert result.empty_classes == ["right"]
    assert not result.empty_foreground
    assert result.curves["right"] == [1.0]  # both empty for that class


def test_one_kept_head_gives_undefined_aula():
    result = aula_from_labels([np.array([0, 1, 1])], BINARY, ["final"])
    assert result.pair_labels == []
    assert result.curves["union"] == []
    assert math.isnan(result.normalized["union"]) and math.isnan(result.raw["tumour"])
    assert result.to_dict()["normalized"]["union"] is None  # JSON has no NaN


def test_confusion_route_equals_mask_route():
    rng = np.random.default_rng(3)
    heads = [rng.integers(0, 3, size=200) for _ in range(5)]
    heads[2][:] = 0  # include an empty head
    names = ["background", "left", "right"]
    confusions = [
        np.bincount(a * 3 + b, minlength=9).reshape(3, 3) for a, b in zip(heads[:-1], heads[1:], strict=False)
    ]
    counts = np.bincount(heads[-1], minlength=3)
    fast = aula_from_confusions(confusions, names, 0, [f"h{i}" for i in range(5)], counts)
    reference = aula_from_labels(heads, THREE, [f"h{i}" for i in range(5)], ensemble_label=heads[-1])
    assert_curves_close(fast.curves, reference.curves)
    assert fast.raw == pytest.approx(reference.raw)
    assert fast.pair_labels == reference.pair_labels == pair_labels([f"h{i}" for i in range(5)])


def test_voxel_maps_by_hand():
    # two heads, two classes, one voxel: p = (0.8, 0.2) and (0.4, 0.6)
    probabilities = torch.tensor([[0.8, 0.2], [0.4, 0.6]]).reshape(2, 2, 1)
    maps = ensemble_maps(probabilities)

    def h(*p):
        return -sum(x * math.log(x) for x in p)

    assert maps["label"].item() == 0  # mean (0.6, 0.4)
    assert maps["agreement"].item() == pytest.approx(0.5)
    assert maps["entropy"].item() == pytest.approx(h(0.6, 0.4))
    assert maps["mutual_information"].item() == pytest.approx(h(0.6, 0.4) - (h(0.8, 0.2) + h(0.4, 0.6)) / 2)
    assert maps["variance"].item() == pytest.approx(0.04)  # each class: values +-0.2 around the mean


def _random_logits(shape, strides, classes, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(classes, *(s // st for s in shape), generator=generator) * 2 for st in strides]


@pytest.mark.parametrize("first,stop", [(0, 5), (1, 4), (3, 5), (2, 3)])
def test_streaming_reduction_matches_the_reference(first, stop):
    shape, strides, classes = (8, 12, 16), [1, 2, 4, 2, 1], 3
    logits = _random_logits(shape, strides, classes, seed=first * 10 + stop)
    crop = (slice(1, 7), slice(0, 11), slice(2, 16))
    stream = HeadStream(logits, shape, crop, slicewise=False, num_classes=classes)
    reduced = stream.reduce(first, stop, ("agreement", "entropy", "mutual_information", "variance"))
    upsampled = torch.stack([upsample_logits(z[None], list(shape))[0] for z in logits[first:stop]])
    probabilities = torch.softmax(upsampled[(slice(None), slice(None), *crop)], dim=1)
    reference = ensemble_maps(probabilities)
    # labels agree except where the mean's top two classes are within fixed-point resolution
    top2 = reference["mean"].topk(2, dim=0).values
    decided = (top2[0] - top2[1]) > 1e-6
    assert torch.equal(reduced.label_index.long()[decided], reference["label"][decided])
    for name in ("entropy", "mutual_information", "variance"):
        assert torch.allclose(reduced.maps[name].double(), reference[name], atol=2e-6), name
    agree = reference["agreement"].float()
    assert torch.allclose(reduced.maps["agreement"][decided], agree[decided])
    head_labels = [lab.numpy() for lab in reference["head_labels"]]
    expected = aula_from_labels(head_labels, THREE)
    confusions = [c.numpy() for c in reduced.confusions]
    got = aula_from_confusions(
        confusions, list(THREE), 0, [f"h{i}" for i in range(stop - first)], reduced.class_counts.numpy()
    )
    assert_curves_close(got.curves, expected.curves)


def test_incremental_ranges_equal_fresh_reductions_bit_for_bit():
    shape, strides, classes = (8, 8, 8), [1, 2, 4, 8, 4, 2, 1], 3
    logits = _random_logits(shape, strides, classes, seed=7)
    crop = (slice(0, 8),) * 3
    maps = ("agreement", "entropy", "mutual_information", "variance")
    walking = HeadStream(logits, shape, crop, slicewise=False, num_classes=classes)
    for first, stop in [(0, 7), (1, 7), (2, 6), (2, 7), (0, 3), (4, 5), (1, 7)]:
        moved = walking.reduce(first, stop, maps)
        fresh = HeadStream(logits, shape, crop, slicewise=False, num_classes=classes).reduce(
            first, stop, maps
        )
        assert torch.equal(moved.label_index, fresh.label_index)
        for name in maps:
            assert torch.equal(moved.maps[name], fresh.maps[name]), (first, stop, name)
        assert all(torch.equal(a, b) for a, b in zip(moved.confusions, fresh.confusions, strict=False))


def test_slicewise_heads_upsample_in_plane_only():
    shape, classes = (5, 8, 8), 2
    logits = [torch.randn(classes, 5, 8 // s, 8 // s) for s in (1, 2, 4)]
    stream = HeadStream(
        logits, shape, (slice(0, 5), slice(0, 8), slice(0, 8)), slicewise=True, num_classes=classes
    )
    probabilities = stream.head_probabilities(2)
    for z in range(5):  # each slice is its own 2D image: bilinear in-plane, nothing mixed across z
        expected = torch.softmax(upsample_logits(logits[2][:, z][None], [8, 8])[0], dim=0)
        assert torch.allclose(probabilities[:, z], expected, atol=1e-6)


def test_agreement_curve_is_adjacent_pairs_only():
    masks = [np.array([1, 0]), np.array([0, 1]), np.array([1, 0])]
    assert agreement_curve(masks) == [0.0, 0.0]  # first and last agree, but they are not adjacent

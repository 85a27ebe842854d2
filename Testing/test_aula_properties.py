"""Property tests: bounds and invariances of AULA, the agreement curve and every voxel map."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from LayerEnsemblesLib.inference.reduction import HeadStream
from LayerEnsemblesLib.uncertainty import aula, aula_from_labels, ensemble_maps

CLASSES = {"background": 0, "a": 1, "b": 2}
SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def head_labels(draw, max_heads=8, max_voxels=40):
    heads = draw(st.integers(2, max_heads))
    voxels = draw(st.integers(1, max_voxels))
    stack = draw(arrays(np.int64, (heads, voxels), elements=st.integers(0, 2)))
    return list(stack)


@st.composite
def probability_stacks(draw):
    heads = draw(st.integers(1, 6))
    classes = draw(st.integers(2, 4))
    voxels = draw(st.integers(1, 12))
    logits = draw(arrays(np.float64, (heads, classes, voxels), elements=st.floats(-8, 8)))
    return torch.softmax(torch.from_numpy(logits), dim=1)


@SETTINGS
@given(st.lists(st.floats(0, 1), min_size=2, max_size=12))
def test_aula_of_any_curve_is_within_bounds(curve):
    raw, normalized = aula(curve)
    pairs = len(curve)
    assert -1e-12 <= raw <= pairs - 1 + 1e-12
    assert -1e-12 <= normalized <= 1 + 1e-12


@SETTINGS
@given(head_labels())
def test_aula_bounds_for_every_class_and_the_union(labels):
    result = aula_from_labels(labels, CLASSES)
    pairs = len(labels) - 1
    for key in ("a", "b", "union"):
        assert all(0.0 <= d <= 1.0 for d in result.curves[key])
        assert len(result.curves[key]) == pairs
        if pairs >= 2:
            assert -1e-12 <= result.raw[key] <= pairs - 1 + 1e-12
        assert -1e-12 <= result.normalized[key] <= 1 + 1e-12


@SETTINGS
@given(head_labels(), st.randoms(use_true_random=False))
def test_aula_ignores_voxel_order(labels, random):
    order = list(range(labels[0].size))
    random.shuffle(order)
    shuffled = [lab[order] for lab in labels]
    assert _curves(aula_from_labels(shuffled, CLASSES)) == _curves(aula_from_labels(labels, CLASSES))


@SETTINGS
@given(head_labels())
def test_relabelling_the_classes_moves_results_with_the_names(labels):
    swapped = [np.choose(lab, [0, 2, 1]) for lab in labels]  # values 1 <-> 2, names follow
    original = aula_from_labels(labels, CLASSES)
    relabelled = aula_from_labels(swapped, {"background": 0, "a": 2, "b": 1})
    assert _curves(original) == _curves(relabelled)


@SETTINGS
@given(head_labels())
def test_reversing_the_head_order_keeps_aula(labels):
    forward = aula_from_labels(labels, CLASSES)
    backward = aula_from_labels(labels[::-1], CLASSES)
    for key in forward.raw:
        assert math.isclose(forward.raw[key], backward.raw[key], abs_tol=1e-12)


@SETTINGS
@given(arrays(np.int64, st.integers(1, 30), elements=st.integers(0, 2)), st.integers(2, 9))
def test_identical_heads_give_maximal_aula(label, heads):
    result = aula_from_labels([label] * heads, CLASSES)
    assert result.normalized["union"] == 1.0
    assert result.raw["union"] == heads - 2


@SETTINGS
@given(probability_stacks())
def test_voxel_map_bounds(probabilities):
    maps = ensemble_maps(probabilities)
    classes = probabilities.shape[1]
    assert ((maps["agreement"] >= 0) & (maps["agreement"] <= 1)).all()
    assert (maps["mutual_information"] >= 0).all()
    assert (maps["entropy"] >= maps["mutual_information"] - 1e-12).all()
    assert (maps["entropy"] <= math.log(classes) + 1e-9).all()
    assert (maps["variance"] >= 0).all() and (maps["variance"] <= 0.25).all()


@SETTINGS
@given(probability_stacks(), st.integers(2, 5))
def test_identical_heads_agree_fully_and_carry_no_mutual_information(probabilities, copies):
    stack = probabilities[:1].repeat(copies, 1, 1)
    maps = ensemble_maps(stack)
    assert torch.all(maps["agreement"] == 1)
    assert bool((maps["mutual_information"].abs() <= 1e-12).all())
    assert bool((maps["variance"].abs() <= 1e-15).all())


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(2, 4), st.integers(0, 2**31 - 1))
def test_streaming_maps_keep_the_same_bounds(heads, classes, seed):
    generator = torch.Generator().manual_seed(seed)
    shape = (4, 4, 4)
    logits = [
        torch.randn(classes, *(s // st_ for s in shape), generator=generator) * 3
        for st_ in [1, 2, 4, 2, 1][:heads]
    ]
    stream = HeadStream(logits, shape, (slice(0, 4),) * 3, slicewise=False, num_classes=classes)
    reduced = stream.reduce(0, heads, ("agreement", "entropy", "mutual_information", "variance"))
    maps = reduced.maps
    assert ((maps["agreement"] >= 0) & (maps["agreement"] <= 1)).all()
    assert (maps["mutual_information"] >= 0).all()
    assert (maps["entropy"] + 1e-6 >= maps["mutual_information"]).all()
    assert (maps["variance"] >= 0).all()
    if heads == 1:
        assert torch.all(maps["agreement"] == 1) and torch.all(maps["mutual_information"] < 1e-6)


def _curves(result):
    return {k: [round(v, 12) for v in c] for k, c in result.curves.items()}

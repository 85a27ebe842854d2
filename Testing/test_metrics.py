"""Per-case metrics against hand-computed values (and the distance transform against brute force)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.evaluation import metrics


def _line(shape, y, x_values):
    mask = np.zeros(shape, bool)
    mask[0, y, list(x_values)] = True
    return mask


def test_dice_hand_computed():
    prediction = np.zeros((1, 2, 5), bool)
    reference = np.zeros((1, 2, 5), bool)
    prediction[0, 0, :4] = True  # 4 voxels
    reference[0, 0, 1:5] = True  # 4 voxels on the first row ...
    reference[0, 1, :2] = True  # ... and 2 on the second: 6 voxels, 3 in common
    assert metrics.dice(prediction, reference) == pytest.approx(2 * 3 / (4 + 6))


def test_dice_of_empty_masks():
    empty = np.zeros((2, 2, 2), bool)
    full = np.ones((2, 2, 2), bool)
    assert metrics.dice(empty, empty) == 1.0
    assert metrics.dice(empty, full) == 0.0
    assert metrics.dice(full, empty) == 0.0


def test_modified_hausdorff_with_anisotropic_spacing():
    # A = voxels x = 0, 1 on row y = 0; B = voxel x = 3 on row y = 1; spacing x 2 mm, y 0.5 mm
    shape = (1, 2, 4)
    a = _line(shape, 0, [0, 1])
    b = _line(shape, 1, [3])
    spacing = (2.0, 0.5, 1.0)
    forward = (math.hypot(6.0, 0.5) + math.hypot(4.0, 0.5)) / 2  # mean over A of the distance to B
    backward = math.hypot(4.0, 0.5)  # B's only voxel to the nearest voxel of A (x = 1)
    assert metrics.modified_hausdorff(a, b, spacing) == pytest.approx(max(forward, backward), abs=1e-5)
    assert metrics.modified_hausdorff(b, a, spacing) == pytest.approx(max(forward, backward), abs=1e-5)


def test_modified_hausdorff_counts_overlap_as_zero():
    # A = 20 voxels x = 0..19, B = the first 10; spacing 1.5 mm along x
    shape = (1, 3, 22)
    a = _line(shape, 1, range(20))
    b = _line(shape, 1, range(10))
    expected = 1.5 * sum(range(1, 11)) / 20  # 10 overlapping voxels at 0, then 1.5, 3, ..., 15 mm
    assert metrics.modified_hausdorff(a, b, (1.5, 1.0, 1.0)) == pytest.approx(expected, abs=1e-5)


def test_hausdorff95_hand_computed():
    # one-voxel-thick lines are all surface; A -> B distances: ten 0s, then 1.5, 3, ..., 15 mm
    shape = (1, 3, 22)
    a = _line(shape, 1, range(20))
    b = _line(shape, 1, range(10))
    sorted_distances = [0.0] * 10 + [1.5 * k for k in range(1, 11)]
    position = 0.95 * 19  # numpy's linear-interpolation percentile
    low = int(position)
    expected = sorted_distances[low] + (position - low) * (sorted_distances[low + 1] - sorted_distances[low])
    assert expected == pytest.approx(13.575)
    assert metrics.hausdorff95(a, b, (1.5, 1.0, 1.0)) == pytest.approx(expected, abs=1e-5)


def test_hausdorff95_uses_surfaces_not_volumes():
    # two solid 5x5x5 cubes offset by 2 voxels along x (spacing 1): the surface of each has voxels at
    # distance 0 (shared faces) up to 2; the 95th percentile of both directions is 2
    a = np.zeros((9, 9, 11), bool)
    b = np.zeros((9, 9, 11), bool)
    a[2:7, 2:7, 2:7] = True
    b[2:7, 2:7, 4:9] = True
    assert metrics.hausdorff95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(2.0, abs=1e-5)
    # the MHD of the voxel sets: 10 of 25 columns... per row of 5 voxels, 2 are outside the other at 1, 2
    assert metrics.modified_hausdorff(a, b, (1.0, 1.0, 1.0)) == pytest.approx((1 + 2) / 5, abs=1e-5)


def test_distance_transform_matches_brute_force():
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(3)
    mask = rng.random((6, 7, 8)) > 0.93
    spacing = (0.7, 1.3, 2.5)
    distances = metrics.distance_to_set(mask, spacing)
    scale = np.array(spacing[::-1])
    everywhere = np.argwhere(np.ones_like(mask)) * scale
    expected = cdist(everywhere, np.argwhere(mask) * scale).min(axis=1).reshape(mask.shape)
    assert np.abs(distances - expected).max() < 1e-4


def test_distances_of_empty_masks():
    empty = np.zeros((4, 5, 6), bool)
    some = empty.copy()
    some[1, 1, 1] = True
    spacing = (1.0, 2.0, 3.0)
    diagonal = math.sqrt((6 * 1.0) ** 2 + (5 * 2.0) ** 2 + (4 * 3.0) ** 2)
    assert metrics.modified_hausdorff(empty, empty, spacing) == 0.0
    assert metrics.hausdorff95(empty, empty, spacing) == 0.0
    assert metrics.modified_hausdorff(empty, some, spacing) == pytest.approx(diagonal)
    assert metrics.hausdorff95(some, empty, spacing) == pytest.approx(diagonal)


def test_negative_log_likelihood_hand_computed():
    probabilities = np.array([[0.8, 0.2], [0.25, 0.75], [1.0, 0.0]])
    labels = np.array([0, 0, 0])
    expected = -(math.log(0.8) + math.log(0.25) + math.log(1.0)) / 3
    assert metrics.negative_log_likelihood(probabilities, labels) == pytest.approx(expected)
    # a certain mistake costs -log(epsilon), not infinity
    assert metrics.negative_log_likelihood(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(
        -math.log(metrics.NLL_EPSILON)
    )


def test_labels_to_indices_refuses_undeclared_values():
    label = np.array([[0, 2], [4, 0]])
    assert metrics.labels_to_indices(label, [0, 2, 4]).tolist() == [[0, 1], [2, 0]]
    with pytest.raises(InputError, match="label values \\[4\\]"):
        metrics.labels_to_indices(label, [0, 2], "case.nii.gz")


def test_segmentation_metrics_per_class_union_and_mean():
    reference = np.zeros((1, 3, 8), np.uint8)
    prediction = np.zeros((1, 3, 8), np.uint8)
    reference[0, 1, 0:4] = 1
    reference[0, 1, 4:8] = 2
    prediction[0, 1, 0:5] = 1  # one voxel of class 2 predicted as class 1
    prediction[0, 1, 5:8] = 2
    classes = {"Anterior": 1, "Posterior": 2}
    row = metrics.segmentation_metrics(prediction, reference, (1.0, 1.0, 1.0), classes)
    assert row["dice_anterior"] == pytest.approx(2 * 4 / 9)
    assert row["dice_posterior"] == pytest.approx(2 * 3 / 7)
    assert row["dice_union"] == 1.0
    assert row["dice_mean"] == pytest.approx((8 / 9 + 6 / 7) / 2)
    assert row["mhd_union"] == 0.0
    assert row["mhd_anterior"] == pytest.approx(1 / 5)  # the extra voxel is 1 mm from class 1
    assert row["empty_anterior"] == 0.0


def test_empty_flag_when_prediction_misses_a_structure():
    reference = np.zeros((1, 3, 6), np.uint8)
    reference[0, 1, 1:3] = 1
    prediction = np.zeros_like(reference)
    row = metrics.segmentation_metrics(prediction, reference, (1.0, 1.0, 1.0), {"structure": 1})
    assert row["empty_structure"] == 1.0 and row["empty_union"] == 1.0
    assert row["dice_structure"] == 0.0
    assert row["mhd_structure"] == pytest.approx(metrics.diagonal_mm(reference.shape, (1.0, 1.0, 1.0)))


def test_check_same_grid_is_the_one_training_uses():
    from LayerEnsemblesLib import data, grids

    assert metrics.check_same_grid is grids.check_same_grid
    assert data.check_same_grid is grids.check_same_grid
    image = sitk.Image(4, 5, 6, sitk.sitkFloat32)
    label = sitk.Image(4, 5, 7, sitk.sitkUInt8)
    with pytest.raises(InputError, match=r"case_001: label geometry differs .*size \(4, 5, 7\)"):
        metrics.check_same_grid(image, label, "case_001")
    label = sitk.Image(4, 5, 6, sitk.sitkUInt8)
    label.SetSpacing((1.0, 1.0, 2.0))
    with pytest.raises(InputError, match="spacing"):
        metrics.check_same_grid(image, label, "case_001")


@pytest.mark.parametrize(
    "change, word",
    [
        (lambda label: label.SetOrigin((40.0, 0.0, 0.0)), "origin"),  # shifted 40 mm
        (lambda label: label.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1)), "direction"),  # flipped
        (lambda label: label.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1)), "direction"),  # axes swapped
        (lambda label: label.SetOrigin((0.0, 0.0, 0.01)), "origin"),  # a hundredth of a voxel
    ],
)
def test_check_same_grid_refuses_shifted_and_flipped_labels(change, word):
    image = sitk.Image(4, 5, 6, sitk.sitkFloat32)
    label = sitk.Image(4, 5, 6, sitk.sitkUInt8)
    metrics.check_same_grid(image, label, "case_001")  # the same grid passes
    change(label)
    with pytest.raises(InputError, match=word):
        metrics.check_same_grid(image, label, "case_001")


def test_column_name():
    assert metrics.column_name("Left Ventricle (LV)") == "left_ventricle_lv"


def _monai_hd95(prediction: np.ndarray, reference: np.ndarray, spacing) -> float:
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")

    def one_hot(mask):
        mask = torch.as_tensor(mask, dtype=torch.float32)
        return torch.stack([1 - mask, mask])[None]

    distance = monai_metrics.compute_hausdorff_distance(
        one_hot(prediction), one_hot(reference), percentile=95, spacing=list(spacing[::-1])
    )
    return float(distance[0, 0])


def _blob(shape, centre, radius, spacing=(1.0, 1.0, 1.0)):
    grid = np.indices(shape).astype(float)
    scale = np.asarray(spacing[::-1], float)[:, None, None, None]
    offset = (grid - np.asarray(centre, float)[:, None, None, None]) * scale
    return (offset**2).sum(axis=0) <= radius**2


BORDER_CASES = {
    # name: (prediction, reference) builders on a (12, 14, 16) grid
    "inside": lambda s: (_blob(s, (6, 7, 8), 4), _blob(s, (6, 7, 9), 3.5)),
    "touching the border": lambda s: (_blob(s, (0, 7, 8), 5), _blob(s, (1, 7, 8), 4.5)),
    "cut by two borders": lambda s: (_blob(s, (0, 0, 8), 6), _blob(s, (2, 1, 6), 5)),
    "full against a blob": lambda s: (np.ones(s, bool), _blob(s, (6, 7, 8), 4)),
    "full against a border slab": lambda s: (np.ones(s, bool), np.indices(s)[0] < 4),
    "slab against a slab": lambda s: (np.indices(s)[2] < 5, np.indices(s)[2] < 9),
    "full against full": lambda s: (np.ones(s, bool), np.ones(s, bool)),
    "thin diagonal": lambda s: (np.eye(s[1], s[2], dtype=bool)[None].repeat(s[0], 0), _blob(s, (6, 7, 8), 3)),
}


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.2, 2.5)])
@pytest.mark.parametrize("case", list(BORDER_CASES))
def test_hausdorff95_matches_monai_at_the_border_and_for_full_masks(case, spacing):
    """Outside the image is background and surfaces are face-connected, as in MONAI's definition."""
    prediction, reference = BORDER_CASES[case]((12, 14, 16))
    assert prediction.any() and reference.any()
    ours = metrics.hausdorff95(prediction, reference, spacing)
    assert math.isfinite(ours)
    assert ours == pytest.approx(_monai_hd95(prediction, reference, spacing), abs=1e-4)


def test_the_surface_is_face_connected_and_padded():
    cube = np.zeros((5, 5, 5), bool)
    cube[1:4, 1:4, 1:4] = True
    assert metrics.surface(cube).sum() == 26  # every voxel but the centre has a face in the background
    full = np.ones((3, 3, 3), bool)
    assert metrics.surface(full).sum() == 26  # the image border is a surface, the centre is not
    plus = np.zeros((3, 3, 3), bool)  # the centre touches background only across edges and corners
    plus[1] = True
    plus[:, 1, 1] = True
    plus_surface = metrics.surface(plus)
    assert plus_surface[1, 1, 1] == False  # noqa: E712 - its six face neighbours are all foreground
    assert plus_surface.sum() == plus.sum() - 1

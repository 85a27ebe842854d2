"""Per-case quality of a segmentation against its reference: Dice, HD95, MHD (mm) and NLL.

Definitions (the paper's, see ``docs/method.md``; distances in millimetres, with the voxel spacing):

- **Dice** ``2|A∩B| / (|A| + |B|)`` per foreground class (label == value) and for the union of the
  foreground classes.
- **MHD**, the modified Hausdorff distance of Dubuisson and Jain that the paper reports: the larger of
  the two mean nearest-neighbour distances between the foreground *voxel sets*,
  ``max(mean_{a∈A} d(a, B), mean_{b∈B} d(b, A))``; a voxel inside the other set contributes 0.
- **HD95**, the modern companion, on *surfaces* (foreground voxels with a face neighbour in the
  background, the outside of the image counting as background): the larger of the two directed 95th
  percentiles of surface-to-surface distances, as
  MONAI's ``compute_hausdorff_distance(percentile=95)`` defines it.
- **NLL** of the reference labels under the ensemble's mean softmax, averaged over all voxels of the
  image; probabilities are clipped at :data:`NLL_EPSILON` so a confident mistake costs a finite
  ``-log(1e-7) ≈ 16.1``.

Distances come from SimpleITK's exact Euclidean distance transform (``SignedMaurerDistanceMap`` with
the image spacing); outside a set its value is the distance to the nearest voxel centre of the set.

Empty masks, documented because a failed segmentation is often empty:

- both empty (the structure is absent and the model agrees): Dice 1, HD95 0, MHD 0;
- a mask that fills the whole image has its outer layer of voxels as surface (no special case);
- exactly one empty: Dice 0, and HD95 = MHD = the physical diagonal of the image, the largest distance
  the field of view allows. A finite worst case keeps every case in the paired tests and the rank
  correlations (dropping failures would flatter the method); the ``empty_*`` columns flag such cases.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..grids import check_same_grid  # noqa: F401 - the evaluation's grid check is the shared one

NLL_EPSILON = 1e-7
HD_PERCENTILE = 95.0


def column_name(name: str) -> str:
    """A class name as a CSV column suffix: lower case, other characters as underscores."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "class"


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty (they agree that nothing is there)."""
    prediction = np.asarray(prediction, bool)
    reference = np.asarray(reference, bool)
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, reference).sum()) / total


def _as_image(mask: np.ndarray, spacing: Sequence[float]) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing))
    return image


def distance_to_set(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance (mm) from every voxel to the nearest voxel of ``mask`` (0 inside it).

    ``mask`` is in array order (z, y, x); ``spacing`` in SimpleITK order (x, y, z).
    """
    distance = sitk.SignedMaurerDistanceMap(
        _as_image(mask, spacing), insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    return np.maximum(sitk.GetArrayFromImage(distance), 0.0)


def surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a face neighbour in the background (the set's boundary voxels).

    The mask is padded with background first: outside the image is not foreground, so a structure
    touching the border has a surface there (as MONAI's ``get_mask_edges`` sees it), and a mask that
    fills the whole image has its outer layer as surface instead of none. Face (not 26-) connectivity
    keeps the surface one voxel thin, as MONAI's erosion with the cross-shaped structuring element does.
    """
    mask = np.asarray(mask, bool)
    padded = np.pad(mask, 1, constant_values=False)
    contour = sitk.BinaryContour(
        _as_image(padded, (1.0,) * mask.ndim), fullyConnected=False, backgroundValue=0, foregroundValue=1
    )
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    return sitk.GetArrayFromImage(contour).astype(bool)[inner]


def diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The physical diagonal of the image (array shape z, y, x; spacing x, y, z)."""
    extent = np.asarray(shape[::-1], float) * np.asarray(spacing, float)
    return float(np.sqrt((extent**2).sum()))


def _empty_distance(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> float | None:
    has_prediction, has_reference = bool(prediction.any()), bool(reference.any())
    if not has_prediction and not has_reference:
        return 0.0
    if has_prediction != has_reference:
        return diagonal_mm(prediction.shape, spacing)
    return None


def modified_hausdorff(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> float:
    """The paper's MHD (mm) between two voxel sets; see the module docstring for empty masks."""
    prediction = np.asarray(prediction, bool)
    reference = np.asarray(reference, bool)
    empty = _empty_distance(prediction, reference, spacing)
    if empty is not None:
        return empty
    forward = float(distance_to_set(reference, spacing)[prediction].mean())
    backward = float(distance_to_set(prediction, spacing)[reference].mean())
    return max(forward, backward)


def hausdorff95(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float], percentile: float = HD_PERCENTILE
) -> float:
    """Surface HD95 (mm): max of the two directed percentiles; see the module docstring."""
    prediction = np.asarray(prediction, bool)
    reference = np.asarray(reference, bool)
    empty = _empty_distance(prediction, reference, spacing)
    if empty is not None:
        return empty
    prediction_surface, reference_surface = surface(prediction), surface(reference)
    forward = distance_to_set(reference_surface, spacing)[prediction_surface]
    backward = distance_to_set(prediction_surface, spacing)[reference_surface]
    return float(max(np.percentile(forward, percentile), np.percentile(backward, percentile)))


def negative_log_likelihood(probabilities: np.ndarray, reference_index: np.ndarray) -> float:
    """Mean over voxels of ``-log p(reference class)``.

    ``probabilities`` is [..., K] (components last, as SimpleITK vector images give them) and
    ``reference_index`` the component index of the true class at each voxel (same leading shape).
    """
    probabilities = np.asarray(probabilities)
    reference_index = np.asarray(reference_index)
    if probabilities.shape[:-1] != reference_index.shape:
        raise ValueError(f"probabilities {probabilities.shape} do not match labels {reference_index.shape}")
    index = reference_index[..., None].astype(np.int64)
    true_class = np.take_along_axis(probabilities, index, axis=-1)[..., 0]
    return float(-np.log(np.clip(true_class.astype(np.float64), NLL_EPSILON, 1.0)).mean())


def labels_to_indices(label: np.ndarray, class_values: Sequence[int], source: str = "label") -> np.ndarray:
    """Map label values to component indices (class order of the model); refuse undeclared values."""
    lookup = {int(v): i for i, v in enumerate(class_values)}
    present = np.unique(label)
    unknown = [int(v) for v in present if int(v) not in lookup]
    if unknown:
        raise InputError(f"{source}: label values {unknown} are not among the model's classes {list(lookup)}")
    indices = np.zeros(label.shape, np.int64)
    for value, index in lookup.items():
        indices[label == value] = index
    return indices


def segmentation_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float],
    classes: dict[str, int],
) -> dict[str, float]:
    """Dice, HD95 and MHD per foreground class, for the union, and the mean over classes.

    ``classes`` maps foreground class names to label values. Columns are ``dice_<name>``,
    ``dice_union``, ``dice_mean`` (likewise ``hd95_*``, ``mhd_*``), plus ``empty_<name>`` /
    ``empty_union`` (1 when the prediction is empty where the reference is not).
    """
    row: dict[str, float] = {}
    masks = {column_name(name): (prediction == value, reference == value) for name, value in classes.items()}
    values = list(classes.values())
    masks["union"] = (np.isin(prediction, values), np.isin(reference, values))
    for key, (predicted, expected) in masks.items():
        row[f"dice_{key}"] = dice(predicted, expected)
        row[f"hd95_{key}"] = hausdorff95(predicted, expected, spacing)
        row[f"mhd_{key}"] = modified_hausdorff(predicted, expected, spacing)
        row[f"empty_{key}"] = float(not predicted.any() and expected.any())
    per_class = [column_name(name) for name in classes]
    for metric in ("dice", "hd95", "mhd"):
        row[f"{metric}_mean"] = float(np.mean([row[f"{metric}_{key}"] for key in per_class]))
    return row

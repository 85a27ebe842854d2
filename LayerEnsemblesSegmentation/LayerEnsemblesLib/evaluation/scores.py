"""Image-level uncertainty scores: one number per case that should rank failures first.

- ``aula_raw_<class>``, ``aula_norm_<class>`` (and ``_union``): AULA from the engine, for layer
  ensembles only. High AULA means confident, so its uncertainty is −AULA.
- ``<map>_sum`` and ``<map>_mean`` for the entropy, mutual-information and variance maps: the sum over
  all voxels (the paper's pixel-wise scores) and the mean over all voxels (the same ranking for
  equally sized images, comparable across sizes). High means uncertain.

Every score has a *direction*, so the QC curve, the calibration and the report never need to know
which way a score points.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import SimpleITK as sitk

from .metrics import column_name

MAP_SCORES = ("entropy", "mutual_information", "variance")
CLASS_MEAN = "aula_norm_class_mean"
MAP_REDUCTIONS = ("sum", "mean")
AULA_FORMS = ("raw", "norm")


def is_score_column(name: str) -> bool:
    return name.startswith("aula_") or any(name.startswith(f"{m}_") for m in MAP_SCORES)


def higher_is_uncertain(score: str) -> bool:
    """AULA measures agreement (high = confident); every map score measures disagreement."""
    return not score.startswith("aula_")


def uncertainty(score: str, values) -> np.ndarray:
    """Score values turned so that higher always means more uncertain (for ranking and QC)."""
    values = np.asarray(values, float)
    return values if higher_is_uncertain(score) else -values


def score_label(score: str) -> str:
    """A readable name for plots and tables."""
    if score == CLASS_MEAN:
        return "AULA (normalised) class mean"
    if score.startswith("aula_"):
        _, form, *target = score.split("_")
        return f"AULA {'(normalised) ' if form == 'norm' else ''}{'_'.join(target)}"
    for name in MAP_SCORES:
        if score.startswith(f"{name}_"):
            return f"{name.replace('_', ' ')} ({score[len(name) + 1 :]})"
    return score


def _field(container: Any, name: str, default: Any = None) -> Any:
    """Read ``name`` from a dataclass-like object or a mapping (the engine's result is either)."""
    if isinstance(container, Mapping):
        return container.get(name, default)
    return getattr(container, name, default)


def aula_scores(aula: Any) -> dict[str, float]:
    """``aula_raw_*`` and ``aula_norm_*`` columns from the engine's AULA result (None: no columns)."""
    if aula is None:
        return {}
    row: dict[str, float] = {}
    for form, field in (("raw", "raw"), ("norm", "normalized")):
        values = _field(aula, field) or {}
        for name, value in values.items():
            row[f"aula_{form}_{column_name(name)}"] = float("nan") if value is None else float(value)
    return add_class_mean(row)


def add_class_mean(row: dict[str, Any]) -> dict[str, Any]:
    """Add ``aula_norm_class_mean`` (a decision score) from the per-class columns, if absent.

    Evaluations written before the score existed get it on reading, so their reports and
    ``calibrate --from-csv`` can use it: it is exactly the mean of the foreground classes' values.
    """
    classes = [k for k in row if k.startswith("aula_norm_") and k not in ("aula_norm_union", CLASS_MEAN)]
    if CLASS_MEAN in row or not classes:
        return row
    try:
        values = [float(row[k]) for k in classes]
    except (TypeError, ValueError):
        return row
    row[CLASS_MEAN] = float(np.mean(values)) if all(np.isfinite(values)) else float("nan")
    return row


def map_scores(maps: Mapping[str, sitk.Image], names: Iterable[str] = MAP_SCORES) -> dict[str, float]:
    """Sums and means of the per-voxel uncertainty maps that are present."""
    row: dict[str, float] = {}
    for name in names:
        if name not in maps or maps[name] is None:
            continue
        values = sitk.GetArrayViewFromImage(maps[name]).astype(np.float64)
        row[f"{name}_sum"] = float(values.sum())
        row[f"{name}_mean"] = float(values.mean())
    return row


PAIR_PREFIX = "pair_"


def pair_columns(aula: Any) -> dict[str, float]:
    """``pair_<target>_<j>``: Dice between heads j and j + 1 of the agreement curve, per class and union.

    Recorded (``evaluate --pair-curves``) from a recombination over *all* heads, so that which heads enter
    AULA, pair weights and learned combinations can be explored afterwards from ``cases.csv`` alone.
    These are features, not scores: the ``pair_`` prefix keeps them out of the report's score tables.
    """
    if aula is None:
        return {}
    row: dict[str, float] = {}
    for target, curve in (_field(aula, "curves") or {}).items():
        for index, value in enumerate(curve):
            row[f"{PAIR_PREFIX}{column_name(target)}_{index}"] = (
                float("nan") if value is None else float(value)
            )
    return row


def volume_columns(segmentation: sitk.Image, classes: Mapping[str, int]) -> dict[str, float]:
    """Predicted volume in millilitres per foreground class and for their union (``volume_<target>_ml``)."""
    labels = sitk.GetArrayViewFromImage(segmentation)
    voxel_ml = float(np.prod(segmentation.GetSpacing())) / 1000.0
    row = {f"volume_{column_name(n)}_ml": float((labels == v).sum()) * voxel_ml for n, v in classes.items()}
    row["volume_union_ml"] = float(np.isin(labels, list(classes.values())).sum()) * voxel_ml
    return row


def foreground_map_means(maps: Mapping[str, sitk.Image], segmentation: sitk.Image) -> dict[str, float]:
    """``<map>_fgmean``: a map's mean over the predicted foreground, a size-unbiased aggregation.

    A sum grows with the structure and a whole-image mean shrinks with the field of view; the mean over
    the segmented voxels measures how uncertain the structure itself is. NaN when nothing is segmented.
    """
    foreground = sitk.GetArrayViewFromImage(segmentation) != 0
    row: dict[str, float] = {}
    for name, image in maps.items():
        if image is None or name not in MAP_SCORES:
            continue
        values = sitk.GetArrayViewFromImage(image)
        row[f"{name}_fgmean"] = float(values[foreground].mean()) if foreground.any() else float("nan")
    return row


def image_scores(
    prediction: Any, with_aula: bool = True, maps: Iterable[str] = MAP_SCORES
) -> dict[str, float]:
    """The image-level scores of one prediction from the engine (``maps``: which map scores)."""
    row = map_scores(_field(prediction, "maps") or {}, maps)
    if with_aula:
        row.update(aula_scores(_field(prediction, "aula")))
    return row

"""The uncertainty measures of Layer Ensembles as pure functions: AULA, its agreement curve, voxel maps.

Definitions (``../shared/docs/method.md``; the engine in :mod:`LayerEnsemblesLib.inference.reduction`
computes the same quantities in a streaming form and is tested against these functions):

* Per kept head t, the hard mask M_t = argmax_c p_t (never the soft map: the authors' code cast soft
  maps to bool, which makes every Dice about 1).
* Agreement curve: d_j = Dice(M_j, M_{j+1}) for adjacent kept heads, per foreground class
  (label == c) and for the union of the foreground classes (``"union"``). A pair in which both masks
  are empty agrees and scores 1 (the authors' code scores 0); a prediction without any foreground is
  reported separately by the ``empty_foreground`` flag, because an empty result needs a reviewer.
* AULA = trapezoid area under d with unit spacing, not normalised: with n pairs it lies in
  [0, n - 1]. The normalised AULA divides by n - 1 and lies in [0, 1], so one threshold serves models
  with different head counts. With exactly one pair (two kept heads) the area is 0 and the normalised
  value is that pair's Dice. With one kept head there is no pair: AULA is undefined (NaN), and the
  engine flags such a case rather than inventing a confidence.
* Voxel maps over the kept heads: entropy of the mean (nats), mutual information (entropy of the mean
  minus the mean entropy), variance (across heads, population variance, averaged over classes) and
  agreement (fraction of kept heads whose argmax equals the ensemble's label).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .metadata_schema import DEFAULT_AULA_THRESHOLD  # noqa: F401 - kept importable from here

UNION = "union"


@dataclass
class AulaResult:
    """Image-level agreement of adjacent kept heads; keys are foreground class names and ``"union"``."""

    raw: dict[str, float]
    normalized: dict[str, float]
    curves: dict[str, list[float]]
    pair_labels: list[str]
    empty_foreground: bool
    empty_classes: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        """The normalised union AULA. The accept/flag decision uses the model's ``decision_score``
        instead (``decision_scores.score_value``), which for the shipped model is the class mean."""
        return self.normalized[UNION]

    def to_dict(self) -> dict:
        return {
            "raw": {k: _finite_or_none(v) for k, v in self.raw.items()},
            "normalized": {k: _finite_or_none(v) for k, v in self.normalized.items()},
            "curves": {k: [_finite_or_none(v) for v in c] for k, c in self.curves.items()},
            "pair_labels": list(self.pair_labels),
            "empty_foreground": self.empty_foreground,
            "empty_classes": list(self.empty_classes),
        }


def dice(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """Dice of two boolean masks; two empty masks agree perfectly (1.0)."""
    mask_a, mask_b = np.asarray(mask_a, bool), np.asarray(mask_b, bool)
    return dice_from_counts(int(np.count_nonzero(mask_a & mask_b)), int(mask_a.sum()), int(mask_b.sum()))


def dice_from_counts(intersection: int, size_a: int, size_b: int) -> float:
    total = size_a + size_b
    return 1.0 if total == 0 else 2.0 * intersection / total


def agreement_curve(masks: Sequence[np.ndarray]) -> list[float]:
    """Dice between each pair of adjacent masks (shallow to deep); n masks give n - 1 values."""
    return [dice(a, b) for a, b in zip(masks[:-1], masks[1:], strict=False)]


def aula(curve: Sequence[float]) -> tuple[float, float]:
    """(raw, normalised) area under an agreement curve; see the module docstring for 0 and 1 pairs."""
    values = [float(v) for v in curve]
    if not values:
        return math.nan, math.nan
    if len(values) == 1:
        return 0.0, values[0]
    raw = float(sum(values) - 0.5 * (values[0] + values[-1]))  # trapezoid rule, unit spacing
    return raw, raw / (len(values) - 1)


def pair_labels(head_names: Sequence[str]) -> list[str]:
    """``"deeper/shallower"`` names for the adjacent pairs, e.g. ``"decoder1/decoder0"``."""
    return [f"{b}/{a}" for a, b in zip(head_names[:-1], head_names[1:], strict=False)]


def aula_from_labels(
    labels: Sequence[np.ndarray],
    classes: Mapping[str, int],
    head_names: Sequence[str] | None = None,
    ensemble_label: np.ndarray | None = None,
) -> AulaResult:
    """AULA from the kept heads' label maps (values as in ``classes``: name -> label value, 0 = background).

    ``ensemble_label`` decides the empty flags; without it a class counts as empty when no kept head
    predicts it.
    """
    labels = [np.asarray(lab) for lab in labels]
    names = list(head_names) if head_names is not None else [f"head{i}" for i in range(len(labels))]
    foreground = {name: value for name, value in classes.items() if value != 0}
    curves = {name: agreement_curve([lab == value for lab in labels]) for name, value in foreground.items()}
    curves[UNION] = agreement_curve([lab != 0 for lab in labels])
    if ensemble_label is not None:
        present = set(np.unique(ensemble_label).tolist())
    else:
        present = set().union(*(np.unique(lab).tolist() for lab in labels)) if labels else set()
    return _assemble(curves, pair_labels(names), [n for n, v in foreground.items() if v not in present])


def aula_from_confusions(
    confusions: Sequence[np.ndarray],
    class_names: Sequence[str],
    background_index: int,
    head_names: Sequence[str],
    ensemble_class_counts: Sequence[int],
) -> AulaResult:
    """AULA from each adjacent pair's K x K confusion matrix of class indices (rows: shallower head).

    This is how the engine computes it: one bincount per pair while streaming, no masks kept.
    """
    curves: dict[str, list[float]] = {name: [] for i, name in enumerate(class_names) if i != background_index}
    curves[UNION] = []
    foreground = [i for i in range(len(class_names)) if i != background_index]
    for matrix in confusions:
        matrix = np.asarray(matrix, dtype=np.int64)
        for index in foreground:
            curves[class_names[index]].append(
                dice_from_counts(
                    int(matrix[index, index]), int(matrix[index].sum()), int(matrix[:, index].sum())
                )
            )
        both = matrix[np.ix_(foreground, foreground)].sum()
        curves[UNION].append(
            dice_from_counts(int(both), int(matrix[foreground].sum()), int(matrix[:, foreground].sum()))
        )
    empty = [class_names[i] for i in foreground if int(ensemble_class_counts[i]) == 0]
    return _assemble(curves, pair_labels(head_names), empty)


def _assemble(curves: dict[str, list[float]], labels: list[str], empty_classes: list[str]) -> AulaResult:
    raw, normalized = {}, {}
    for key, curve in curves.items():
        raw[key], normalized[key] = aula(curve)
    foreground = [k for k in curves if k != UNION]
    return AulaResult(
        raw,
        normalized,
        curves,
        labels,
        empty_foreground=len(empty_classes) == len(foreground),
        empty_classes=empty_classes,
    )


def entropy(probabilities: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Shannon entropy in nats, with 0 log 0 = 0."""
    return torch.special.entr(probabilities).sum(dim)  # -p log p in one pass (faster than xlogy)


def ensemble_maps(probabilities: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
    """Reference voxel maps from all kept heads' probabilities at once, shape [n, K, *spatial].

    Holds every head in memory, so the engine does not use it; it defines what the streaming
    reduction must reproduce, and suits small arrays and tests.
    """
    p = torch.as_tensor(probabilities, dtype=torch.float64)
    mean = p.mean(0)
    label = mean.argmax(0)
    head_labels = p.argmax(1)
    entropy_of_mean = entropy(mean, 0)
    mean_entropy = entropy(p, 1).mean(0)
    return {
        "mean": mean,
        "label": label,
        "head_labels": head_labels,
        "entropy": entropy_of_mean,
        "mutual_information": (entropy_of_mean - mean_entropy).clamp_min(0.0),
        "variance": p.var(0, unbiased=False).mean(0),
        "agreement": (head_labels == label).double().mean(0),
    }


def _finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)

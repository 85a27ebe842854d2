"""Choosing a better image-level decision score on validation data, with held-out folds by case.

Works on an ``evaluate --pair-curves`` run of one layer ensemble: each row holds the agreement curve
over *all* heads (``pair_<target>_<j>``: Dice of heads j and j + 1), the predicted volumes and the
maps' foreground means, so every candidate below is computed from ``cases.csv`` without the network:

- AULA over the heads from ``first`` on (skipping shallow heads, as the paper does), union or per class;
- the worst class (minimum over classes) and the mean over classes instead of the union;
- pair weights: the plain mean of the pairs instead of the trapezoid, the deepest pair alone;
- size-unbiased map aggregations: entropy, mutual information and variance averaged over the
  predicted foreground instead of summed over the image;
- a small learned combination: a ridge regression of Dice on the union and worst-class pair values of
  the kept heads and the log predicted volume (a handful of coefficients), fitted on training folds.

``nested_selection`` picks, inside each outer training fold, the candidate with the lowest E-AURC
(learned candidates fitted there too), and scores the pick on the outer held-out cases; the pooled
held-out confidences are then compared with the shipped score on the same rows. No case ever
informs the choice that is measured on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import failure_detection as fd
from .document import to_float as _float

UNION = "union"


def pair_matrix(rows: Sequence[dict[str, Any]], target: str) -> np.ndarray:
    """[rows, pairs] of ``pair_<target>_<j>`` values."""
    columns = sorted(
        (k for k in rows[0] if k.startswith(f"pair_{target}_")), key=lambda k: int(k.rsplit("_", 1)[1])
    )
    if not columns:
        raise ValueError(f"no pair_{target}_* columns: run `evaluate --pair-curves`")
    return np.array([[_float(r.get(c)) for c in columns] for r in rows], float)


def normalised_aula(pairs: np.ndarray, first: int = 0) -> np.ndarray:
    """Trapezoid area under the pairs from ``first`` on, divided by its length (as the engine)."""
    kept = pairs[:, first:]
    if kept.shape[1] == 1:
        return kept[:, 0]
    raw = kept.sum(1) - 0.5 * (kept[:, 0] + kept[:, -1])
    return raw / (kept.shape[1] - 1)


@dataclass
class Candidate:
    name: str
    description: str
    fixed: np.ndarray | None = None  # confidence per row (high = trust), for candidates without fitting
    fit: Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]] | None = None  # train rows -> scorer
    parameters: int = 0


@dataclass
class Features:
    """Everything the candidates need, per row."""

    union: np.ndarray
    classes: dict[str, np.ndarray]
    volume: np.ndarray
    maps: dict[str, np.ndarray] = field(default_factory=dict)


def features(rows: Sequence[dict[str, Any]], classes: Sequence[str]) -> Features:
    return Features(
        union=pair_matrix(rows, UNION),
        classes={c: pair_matrix(rows, c) for c in classes},
        volume=np.array([_float(r.get("volume_union_ml")) for r in rows], float),
        maps={
            name: np.array([_float(r.get(f"{name}_fgmean")) for r in rows], float)
            for name in ("entropy", "mutual_information", "variance")
        },
    )


def ridge_scorer(design: np.ndarray, dice: np.ndarray, strength: float = 1e-3) -> Callable:
    """Least squares with a small ridge on standardised columns; returns design -> predicted Dice."""
    mean, scale = design.mean(0), design.std(0) + 1e-9
    standard = (design - mean) / scale
    augmented = np.hstack([np.ones((standard.shape[0], 1)), standard])
    penalty = strength * np.eye(augmented.shape[1])
    penalty[0, 0] = 0.0
    coefficients = np.linalg.solve(augmented.T @ augmented + penalty, augmented.T @ dice)

    def score(other: np.ndarray) -> np.ndarray:
        return np.hstack([np.ones((other.shape[0], 1)), (other - mean) / scale]) @ coefficients

    score.coefficients = coefficients  # type: ignore[attr-defined]
    return score


def candidates(data: Features, default_first: int) -> list[Candidate]:
    """The candidate scores (``default_first``: the model's skip_heads, the shipped AULA's first pair)."""
    pairs = data.union.shape[1]
    worst = np.minimum.reduce([m for m in data.classes.values()])
    found = [
        Candidate(
            f"aula_union_from_{k}", f"AULA union, pairs {k}..{pairs - 1}", normalised_aula(data.union, k)
        )
        for k in range(pairs)  # k = pairs - 1: the deepest pair alone (a model keeping 2 heads)
    ]
    for k in range(pairs):
        per_class = [normalised_aula(m, k) for m in data.classes.values()]
        found.append(
            Candidate(
                f"aula_worst_class_from_{k}", f"min over classes of AULA, pairs {k}..", np.min(per_class, 0)
            )
        )
        found.append(
            Candidate(
                f"aula_mean_class_from_{k}", f"mean over classes of AULA, pairs {k}..", np.mean(per_class, 0)
            )
        )
    kept = data.union[:, default_first:]
    found += [
        Candidate("pairs_mean_union", "plain mean of the kept pairs (union)", kept.mean(1)),
        Candidate("pairs_min_union", "lowest kept pair (union)", kept.min(1)),
        Candidate("last_pair_union", "deepest pair alone (union)", data.union[:, -1]),
        Candidate(
            "worst_pair_worst_class", "lowest kept pair of the worst class", worst[:, default_first:].min(1)
        ),
    ]
    for name, values in data.maps.items():
        if np.isfinite(values).any():
            found.append(Candidate(f"{name}_fgmean", f"−mean {name} over the predicted foreground", -values))
    design = np.hstack(
        [data.union[:, default_first:], worst[:, default_first:], np.log(data.volume + 1e-3)[:, None]]
    )

    def learned(train: np.ndarray, dice: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        scorer = ridge_scorer(design[train], dice[train])
        return lambda rows: scorer(design[rows])

    found.append(
        Candidate(
            "learned_pairs_volume",
            "ridge regression of Dice on the kept union and worst-class pairs and log volume",
            fit=learned,
            parameters=design.shape[1] + 1,
        )
    )
    return found


def confidences(candidate: Candidate, train: np.ndarray, test: np.ndarray, dice: np.ndarray) -> np.ndarray:
    if candidate.fit is None:
        return candidate.fixed[test]
    return candidate.fit(train, dice)(test)


def metrics_on(confidence: np.ndarray, dice: np.ndarray, threshold: float) -> dict[str, float]:
    keep = np.isfinite(confidence) & np.isfinite(dice)
    if keep.sum() < 3:
        return {m: math.nan for m in fd.METRICS}
    return fd.failure_metrics(confidence[keep], dice[keep], threshold)


def case_folds(case_ids: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    shuffled = np.random.default_rng(seed).permutation(np.unique(case_ids))
    return [np.isin(case_ids, held) for held in np.array_split(shuffled, folds)]


def nested_selection(
    case_ids: Sequence[str],
    dice,
    found: Sequence[Candidate],
    threshold: float,
    outer: int = 5,
    inner: int = 4,
    seed: int = 0,
    criterion: str = "eaurc",
) -> dict[str, Any]:
    """Per outer fold: pick by inner-CV ``criterion`` on the training cases, score on held-out cases."""
    ids, dice = np.asarray(case_ids), np.asarray(dice, float)
    held_out = np.full(ids.size, np.nan)
    every = {c.name: np.full(ids.size, np.nan) for c in found}
    picks = []
    for test in case_folds(ids, outer, seed):
        train_rows = np.flatnonzero(~test)
        inner_scores = {c.name: [] for c in found}
        for inner_test in case_folds(ids[train_rows], inner, seed + 1):
            fit_rows, check_rows = train_rows[~inner_test], train_rows[inner_test]
            for c in found:
                values = metrics_on(confidences(c, fit_rows, check_rows, dice), dice[check_rows], threshold)
                inner_scores[c.name].append(values[criterion])
        sign = 1 if fd.LOWER_IS_BETTER.get(criterion) else -1
        ranked = sorted(found, key=lambda c: sign * np.nanmean(inner_scores[c.name]))
        pick = ranked[0]
        picks.append(pick.name)
        test_rows = np.flatnonzero(test)
        held_out[test_rows] = confidences(pick, train_rows, test_rows, dice)
        for c in found:
            every[c.name][test_rows] = confidences(c, train_rows, test_rows, dice)
    return {"picks": picks, "selected": held_out, "every": every}

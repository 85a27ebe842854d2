"""Report sections for failure detection: AUROC, AURC, E-AURC, AUGRC and QC AUC with case-level CIs.

Built from the same ``EvaluationData`` as the rest of the report (so ``evaluate --report-only`` adds
them to an old evaluation). Intervals are 95 % percentile bootstrap intervals over *cases* (all
conditions of a case resampled together), computed by :mod:`.failure_detection`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from . import failure_detection as fd
from . import quality_fit, scores, stats
from .document import number_text as _number
from .document import p_text as _p
from .document import to_float as _float

if TYPE_CHECKING:
    from .document import Document
    from .report import EvaluationData

HEADER_LABELS = {
    "auroc": "AUROC ↑",
    "aurc": "AURC ↓",
    "eaurc": "E-AURC ↓",
    "augrc": "AUGRC ↓",
    "augrc_binary": "QC AUC ↓",
    "spearman": "ρ with Dice ↑",
}


def _rows(data: EvaluationData, method: str, score: str, metric: str, condition: str | None = None):
    """Case ids, confidences and Dice of the rows where both are finite (optionally one condition)."""
    subset = [r for r in data.subset(method) if condition is None or r["condition"] == condition]
    ids = np.array([r["case"] for r in subset])
    confidence = -scores.uncertainty(score, [_float(r.get(score)) for r in subset])
    dice = np.array([_float(r.get(metric)) for r in subset])
    keep = np.isfinite(confidence) & np.isfinite(dice)
    return ids[keep], confidence[keep], dice[keep], len(subset)


def _complete_scores(data: EvaluationData, method: str, metric: str) -> list[str]:
    """Scores defined on every row with a Dice: a score missing on some rows cannot be compared."""
    usable = []
    for score in data.score_columns(method):
        ids, _, _, total = _rows(data, method, score, metric)
        dice = data.values(method, metric)
        if ids.size == int(np.isfinite(dice).sum()) and ids.size:
            usable.append(score)
    return usable


def failure_table(
    data: EvaluationData, document: Document, metric: str, threshold: float, resamples: int
) -> None:
    """One row per method and score, all conditions together, each metric with its case-level CI."""
    header = ["Method", "Score"] + [HEADER_LABELS[m] for m in fd.METRICS] + ["QC random", "QC ideal", "cases"]
    rows = []
    for method in data.methods:
        for score in _complete_scores(data, method, metric):
            ids, confidence, dice, _ = _rows(data, method, score, metric)
            estimates = fd.bootstrap_metrics(ids, confidence, dice, threshold, resamples)
            random, ideal = fd.binary_references(dice, threshold)
            rows.append(
                [method, scores.score_label(score)]
                + [estimates[m].text() for m in fd.METRICS]
                + [
                    f"{random:.3f}",
                    f"{ideal:.3f}",
                    f"{np.unique(ids).size} × {ids.size // max(np.unique(ids).size, 1)}",
                ]
            )
    if rows:
        document.table(header, rows)
    else:
        document.paragraph("No method has a score defined on every case.")


def per_condition_table(
    data: EvaluationData, document: Document, metric: str, threshold: float, main_scores: dict[str, str]
) -> None:
    """Each method's main score per condition: AUROC, E-AURC and Spearman ρ (with its p over cases)."""
    conditions = list(dict.fromkeys(r["condition"] for r in data.rows))
    first = next(iter(main_scores), "")
    header = ["Condition", f"poor ({first})"]
    for method in main_scores:
        header += [f"{method} AUROC", f"{method} E-AURC", f"{method} ρ (p)"]
    rows = []
    for condition in conditions:
        poor = "–"
        row = []
        for method, score in main_scores.items():
            ids, confidence, dice, _ = _rows(data, method, score, metric, condition)
            if ids.size < 3:
                row += ["–", "–", "–"]
                continue
            values = fd.failure_metrics(confidence, dice, threshold)
            rho = stats.spearman(confidence, dice)
            if method == first:
                poor = f"{int((dice < threshold).sum())} / {dice.size}"
            rho_text = "–" if not math.isfinite(rho.statistic) else f"{rho.statistic:.2f} ({_p(rho.pvalue)})"
            row += [_number(values["auroc"]), _number(values["eaurc"]), rho_text]
        rows.append([condition, poor] + row)
    document.table(header, rows)


def difference_table(
    data: EvaluationData,
    document: Document,
    metric: str,
    threshold: float,
    reference: str,
    main_scores: dict[str, str],
    resamples: int,
) -> None:
    """Each method's main score minus the reference's, paired by (case, condition), CI over cases."""
    if reference not in main_scores:
        return
    rows = []
    mine = _keyed(data, reference, main_scores[reference], metric)
    compared = [(m, s) for m, s in main_scores.items() if m != reference]
    # the reference's other AULA forms too, so a change of decision score shows its effect
    compared = [
        (reference, s)
        for s in _complete_scores(data, reference, metric)
        if s.startswith("aula_norm_") and s != main_scores[reference]
    ] + compared
    for method, score in compared:
        theirs = _keyed(data, method, score, metric)
        keys = sorted(set(mine) & set(theirs))
        if len(keys) < 3:
            continue
        ids = np.array([k[0] for k in keys])
        difference = fd.bootstrap_difference(
            ids,
            np.array([theirs[k][0] for k in keys]),
            np.array([mine[k][0] for k in keys]),
            np.array([theirs[k][1] for k in keys]),
            np.array([mine[k][1] for k in keys]),
            threshold,
            resamples,
        )
        rows.append(
            [f"{method}: {scores.score_label(score)}"]
            + [difference[m].text() for m in fd.METRICS]
            + [str(len(keys))]
        )
    if rows:
        document.table(
            [f"Method: score (minus {reference}: {scores.score_label(main_scores[reference])})"]
            + [f"Δ {HEADER_LABELS[m]}" for m in fd.METRICS]
            + ["rows"],
            rows,
        )


def _keyed(data: EvaluationData, method: str, score: str, metric: str) -> dict:
    values = {}
    for r in data.subset(method):
        confidence = -scores.uncertainty(score, [_float(r.get(score))])[0]
        dice = _float(r.get(metric))
        if math.isfinite(confidence) and math.isfinite(dice):
            values[(r["case"], r["condition"])] = (confidence, dice)
    return values


def failure_detection_section(
    data: EvaluationData,
    document: Document,
    metric: str,
    threshold: float,
    reference: str,
    main_scores: dict[str, str],
    resamples: int = fd.BOOTSTRAP_RESAMPLES,
) -> None:
    document.heading("Failure detection (case-level confidence intervals)")
    document.paragraph(
        f"Risk = 1 − {metric}; cases are accepted from the most confident down, tied scores entering "
        "together. AURC: area under the selective risk (mean risk of the accepted cases) against coverage; "
        "E-AURC: AURC minus that of a perfect ranking; AUGRC: area under the generalised risk (risk of "
        f"accepted cases summed over all cases); AUROC: the score separating failures ({metric} < "
        f"{threshold:g}) from the rest. QC AUC is the paper's Fig. 2 area stated exactly as the AUGRC "
        f"with binary risk 1[{metric} < {threshold:g}] (no 50-step sampling), with the exact random "
        "(P/2N) and ideal (P²/2N²) references. Brackets: 95 % percentile bootstrap intervals over "
        f"cases ({resamples} resamples, every condition of a drawn case kept together), because the "
        "conditions of one case are not independent observations."
    )
    failure_table(data, document, metric, threshold, resamples)
    document.heading("Main scores against the reference, paired", 3)
    document.paragraph(
        "Each method's main score minus the reference's on the same (case, condition) rows; 95 % case "
        "bootstrap intervals. Δ ↑ columns: positive favours the method; ↓ columns: negative does."
    )
    difference_table(data, document, metric, threshold, reference, main_scores, resamples)
    document.heading("Main scores per condition", 3)
    document.paragraph(
        "Within one condition every case appears once, so the Spearman p-value (in brackets) is a valid "
        "test over independent cases. AUROC is undefined (–) where a condition has no poor or no good case."
    )
    per_condition_table(data, document, metric, threshold, main_scores)


def estimated_dice_section(data: EvaluationData, document: Document, metric: str, folds: int = 5) -> None:
    """How well each layer ensemble's AULA scores translate into an estimated Dice, held out by case."""
    rows = []
    for method in data.methods:
        if data.kinds.get(method) != "layer_ensemble":
            continue
        for score in _complete_scores(data, method, metric):
            if not score.startswith("aula_norm_"):
                continue
            ids, confidence, dice, _ = _rows(data, method, score, metric)
            try:
                held = quality_fit.cross_validate(ids, confidence, dice, score, folds=folds)
            except InputError:
                continue
            rows.append(
                [
                    f"{method}: {scores.score_label(score)}",
                    f"{held.mae:.3f}",
                    f"{min(held.fold_mae):.3f}–{max(held.fold_mae):.3f}",
                    f"{held.mae_constant:.3f}",
                    f"{held.coverage:.2f}",
                    f"{held.mean_width:.3f}",
                    f"{held.cases} cases, {held.rows} rows",
                ]
            )
    document.heading("Estimated Dice (held out by case)")
    if not rows:
        document.paragraph(f"No layer ensemble with an AULA score on at least {folds} cases.")
        return
    document.paragraph(
        f"The isotonic map from each AULA score to {metric} that `calibrate --quality-map` stores, fitted "
        f"on {folds - 1} of {folds} folds of cases and applied to the held-out fold: mean absolute error "
        "of the estimate, the same for a constant estimate (the training folds' mean), and how often the "
        "10th–90th percentile interval contains the true value (nominal 0.80)."
    )
    document.table(
        ["Method: score", "MAE", "MAE per fold", "MAE, constant", "interval coverage", "mean width", "data"],
        rows,
    )

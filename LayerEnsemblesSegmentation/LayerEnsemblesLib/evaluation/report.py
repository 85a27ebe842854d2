"""The evaluation report (Markdown, HTML and PNG figures), built only from an evaluation folder's files.

Everything here reads ``cases.csv``, ``heads.csv``, ``cost.json`` and ``run.json``, so
``layer-ensembles evaluate --report-only DIR`` rebuilds the report without running any model. It
mirrors the paper (``docs/method.md``): Table 1 (mean (sd) Dice, MHD and NLL, paired Wilcoxon tests
against the layer ensemble), Table 2 (Spearman ρ of each image-level score with Dice and MHD), Fig. 2
(the quality-control curves), Fig. 3 (Dice and NLL against skipped heads) and a cost table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..fileio import atomic_write_text, read_json_object
from . import failure_detection, plots, qc, report_failure, scores, stats
from .document import Document
from .document import number_text as _number
from .document import p_text as _p
from .document import to_float as _float
from .runner import CASES_FILE, CLEAN, COST_FILE, HEADS_FILE, RUN_FILE
from .tables import read_csv

REPORT_MD, REPORT_HTML = "report.md", "report.html"
FIGURE_QC, FIGURE_QC_MAIN, FIGURE_HEADS, FIGURE_SCATTER = (
    "fig2_qc.png",
    "fig2_qc_main.png",
    "fig3_heads.png",
    "scores_vs_dice.png",
)
REPORT_COLUMNS = ("method", "case", "condition")  # what every table groups by
HEAD_REPORT_COLUMNS = ("method", "condition", "skip_heads")
FIGURE_SCORES = ("aula_norm_union", "entropy_sum", "mutual_information_sum", "variance_sum")
MAIN_SCORE = {
    "layer_ensemble": "aula_norm_union",
    "deep_ensemble": "mutual_information_sum",
    "mc_dropout": "mutual_information_sum",
}


# ------------------------------------------------------------------------------------------ data


@dataclass
class EvaluationData:
    rows: list[dict[str, Any]]
    head_rows: list[dict[str, Any]]
    cost: dict[str, Any]
    run: dict[str, Any]
    methods: list[str]
    kinds: dict[str, str]

    def subset(self, method: str, clean_only: bool = False) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["method"] == method and (not clean_only or r["condition"] == CLEAN)]

    def values(self, method: str, column: str, clean_only: bool = False) -> np.ndarray:
        return np.array([_float(r.get(column)) for r in self.subset(method, clean_only)], float)

    def paired(
        self, method: str, reference: str, column: str, clean_only: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per case, the mean of ``column`` over the conditions both methods have: one pair per case.

        A case under several conditions is one observation, not several, so tests pair cases; pooling
        (case, condition) rows would treat a case's 17 conditions as independent patients.
        """
        mine = {(r["case"], r["condition"]): _float(r.get(column)) for r in self.subset(method, clean_only)}
        theirs = {
            (r["case"], r["condition"]): _float(r.get(column)) for r in self.subset(reference, clean_only)
        }
        keys = [k for k in sorted(set(mine) & set(theirs)) if np.isfinite(mine[k]) and np.isfinite(theirs[k])]
        cases = sorted({case for case, _ in keys})
        by_case = {case: [k for k in keys if k[0] == case] for case in cases}
        return (
            np.array([np.mean([mine[k] for k in by_case[c]]) for c in cases], float),
            np.array([np.mean([theirs[k] for k in by_case[c]]) for c in cases], float),
        )

    def case_ids(self, method: str, clean_only: bool = False) -> np.ndarray:
        return np.array([r["case"] for r in self.subset(method, clean_only)])

    def score_columns(self, method: str) -> list[str]:
        """Scores with at least three finite, non-constant values for ``method`` (AULA first).

        Raw AULA is left out: with a fixed head count it is the normalised AULA times a constant, so it
        ranks cases identically (it stays in ``cases.csv``).
        """
        present = sorted(
            {
                k
                for r in self.subset(method)
                for k in r
                if scores.is_score_column(k) and not k.startswith("aula_raw")
            },
            key=lambda s: (not s.startswith("aula_"), s),
        )
        usable = []
        for column in present:
            values = self.values(method, column)
            values = values[np.isfinite(values)]
            if values.size >= 3 and np.ptp(values) > 0:
                usable.append(column)
        return usable


def load(folder: str | Path) -> EvaluationData:
    folder = Path(folder)
    if not (folder / CASES_FILE).is_file():
        raise InputError(f"{folder}: no {CASES_FILE}; run `layer-ensembles evaluate` first")
    rows = read_csv(folder / CASES_FILE, required=REPORT_COLUMNS)
    if not rows:
        raise InputError(f"{folder / CASES_FILE}: holds no cases")
    heads = folder / HEADS_FILE
    head_rows = read_csv(heads, required=HEAD_REPORT_COLUMNS) if heads.is_file() else []
    cost = read_json_object(folder / COST_FILE, "") if (folder / COST_FILE).is_file() else {}
    run = read_json_object(folder / RUN_FILE, "") if (folder / RUN_FILE).is_file() else {}
    if not isinstance(run.get("methods", []), list) or not isinstance(run.get("classes", []), list):
        raise InputError(f"{folder / RUN_FILE}: 'methods' and 'classes' must be lists")
    order = [m["name"] for m in run.get("methods", [])]
    methods = [m for m in order if any(r["method"] == m for r in rows)]
    methods += [m for m in dict.fromkeys(r["method"] for r in rows) if m not in methods]
    kinds = {r["method"]: r.get("kind", "") for r in rows}
    return EvaluationData(rows, head_rows, cost, run, methods, kinds)


# ------------------------------------------------------------------------------------------ formatting


def _mean_sd(values: np.ndarray, digits: int = 3) -> str:
    mean, sd, count = stats.mean_sd(values)
    return "–" if count == 0 else f"{mean:.{digits}f} ({sd:.{digits}f})"


# ------------------------------------------------------------------------------------------ sections


def table1(data: EvaluationData, document: Document, reference: str, clean_only: bool) -> None:
    columns = [
        ("dice_mean", "Dice"),
        ("dice_union", "Dice (union)"),
        ("mhd_mean", "MHD (mm)"),
        ("hd95_mean", "HD95 (mm)"),
        ("nll", "NLL"),
    ]
    tested = {"dice_mean", "mhd_mean", "nll"}
    header = ["Method", "n"]
    for column, label in columns:
        header.append(label)
        if column in tested:
            header.append("p")
    rows = []
    for method in data.methods:
        subset = data.subset(method, clean_only)
        if not subset:
            continue
        row = [f"**{method}**" if method == reference else method, str(len(subset))]
        for column, _ in columns:
            row.append(_mean_sd(data.values(method, column, clean_only)))
            if column in tested:
                if method == reference:
                    row.append("ref.")
                else:
                    mine, theirs = data.paired(method, reference, column, clean_only)
                    row.append(_p(stats.paired_wilcoxon(mine, theirs).pvalue))
        rows.append(row)
    if rows:
        document.table(header, rows)


def per_condition_table(data: EvaluationData, document: Document, metric: str) -> None:
    conditions = list(dict.fromkeys(r["condition"] for r in data.rows))
    rows = []
    for condition in conditions:
        row = [condition]
        for method in data.methods:
            values = [
                _float(r.get(metric))
                for r in data.rows
                if r["method"] == method and r["condition"] == condition
            ]
            row.append(_mean_sd(np.array(values, float)) if values else "–")
        rows.append(row)
    document.table(["Condition"] + data.methods, rows)


def per_class_table(data: EvaluationData, document: Document) -> None:
    classes = [c["name"] for c in data.run.get("classes", []) if c.get("value") != 0]
    from .metrics import column_name

    keys = [column_name(c) for c in classes] or sorted(
        {
            k[5:]
            for r in data.rows
            for k in r
            if k.startswith("dice_") and k not in ("dice_mean", "dice_union")
        }
    )
    rows = []
    for method in data.methods:
        rows.append(
            [method]
            + [_mean_sd(data.values(method, f"dice_{k}")) for k in keys]
            + [_mean_sd(data.values(method, f"mhd_{k}")) for k in keys]
        )
    document.table(["Method"] + [f"Dice {k}" for k in keys] + [f"MHD {k} (mm)" for k in keys], rows)


def table2(data: EvaluationData, document: Document, metric: str, clean_only: bool) -> None:
    """Spearman ρ per score. With one row per case (clean only) the p-value is valid; over all
    conditions the rows of one case are not independent, so the ρ gets a case-bootstrap interval."""
    pooled = not clean_only and any(r["condition"] != CLEAN for r in data.rows)
    rows = []
    for method in data.methods:
        for score in data.score_columns(method):
            values = data.values(method, score, clean_only)
            if pooled:
                ids = data.case_ids(method)
                with_dice = failure_detection.spearman_interval(ids, values, data.values(method, metric))
                with_mhd = failure_detection.spearman_interval(ids, values, data.values(method, "mhd_mean"))
                count = int((np.isfinite(values) & np.isfinite(data.values(method, metric))).sum())
                rows.append(
                    [method, scores.score_label(score), with_dice.text(), with_mhd.text(), str(count)]
                )
                continue
            with_dice = stats.spearman(values, data.values(method, metric, clean_only))
            with_mhd = stats.spearman(values, data.values(method, "mhd_mean", clean_only))
            rows.append(
                [
                    method,
                    scores.score_label(score),
                    _number(with_dice.statistic),
                    _p(with_dice.pvalue),
                    _number(with_mhd.statistic),
                    _p(with_mhd.pvalue),
                    str(with_dice.count),
                ]
            )
    if rows and pooled:
        document.table(
            ["Method", "Score", f"ρ with {metric} [95 % CI over cases]", "ρ with MHD [95 % CI]", "n"], rows
        )
    elif rows:
        document.table(["Method", "Score", f"ρ with {metric}", "p", "ρ with MHD", "p", "n"], rows)
    else:
        document.paragraph("No method has a usable image-level score on these cases.")


def quality_control(
    data: EvaluationData, document: Document, folder: Path, metric: str, threshold: float
) -> list[Path]:
    rows, panels, main = [], [], []
    for method in data.methods:
        dice = data.values(method, metric)
        usable = np.isfinite(dice)
        if not usable.any():
            continue
        random = qc.random_reference(dice[usable], threshold)
        ideal = qc.ideal_reference(dice[usable], threshold)
        poor = int((dice[usable] < threshold).sum())
        curves = {}
        for score in data.score_columns(method):
            values = data.values(method, score)
            keep = usable & np.isfinite(values)
            if keep.sum() != usable.sum():
                continue  # a score missing on some cases cannot be compared on the same cases
            curve = qc.qc_curve(scores.uncertainty(score, values[keep]), dice[keep], threshold)
            curves[score] = curve
            rows.append(
                [
                    method,
                    scores.score_label(score),
                    _number(curve.auc),
                    _number(random.auc),
                    _number(ideal.auc),
                    f"{poor} / {int(usable.sum())}",
                ]
            )
        shown = {scores.score_label(s): c for s, c in curves.items() if s in FIGURE_SCORES} or {
            scores.score_label(s): c for s, c in list(curves.items())[:4]
        }
        panels.append((method, shown, random, ideal))
        main_score = main_score_for(data, method, curves)
        if main_score:
            main.append((f"{method}: {scores.score_label(main_score)}", curves[main_score], random, ideal))
    if not rows:
        document.paragraph("No quality-control curve: no method has a usable score.")
        return []
    document.table(["Method", "Score", "QC AUC", "random", "ideal", f"poor ({metric} < {threshold:g})"], rows)
    written = [plots.qc_grid(panels, threshold, metric, folder / FIGURE_QC)]
    document.image(
        FIGURE_QC,
        f"Fig. 2: remaining fraction of segmentations with {metric} < {threshold:g} against "
        "the fraction flagged (most uncertain first), per method and score; lower is better.",
    )
    if main:
        written.append(plots.qc_primary(main, threshold, metric, folder / FIGURE_QC_MAIN))
        document.image(FIGURE_QC_MAIN, "Fig. 2 (summary): each method with its main score.")
    return written


def main_score_for(data: EvaluationData, method: str, available: Sequence[str]) -> str | None:
    """A method's decision score where it has one (run.json records the model's), else its kind's usual
    best score, else the entropy sum.

    Every model's metadata names a decision score, an AULA one by default even for a deep ensemble or
    MC dropout, which have no AULA: a recorded score the method's rows do not have is passed over, so
    that such a baseline is compared on its mutual information and not on whichever column comes first.
    """
    recorded = {m.get("name"): m.get("decision_score") for m in data.run.get("methods", [])}
    for candidate in (recorded.get(method), MAIN_SCORE.get(data.kinds.get(method, "")), "entropy_sum"):
        if candidate and candidate in available:
            return candidate
    return next(iter(available), None)


def head_section(data: EvaluationData, document: Document, folder: Path, metric: str) -> list[Path]:
    if not data.head_rows:
        document.paragraph("No head curve (no layer-ensemble method, or the run skipped it).")
        return []
    series, rows = [], []
    for method in [m for m in data.methods if any(r["method"] == m for r in data.head_rows)]:
        for clean_only, style, suffix in ((False, "-", "all cases"), (True, "--", "clean")):
            selected = [
                r
                for r in data.head_rows
                if r["method"] == method and (not clean_only or r["condition"] == CLEAN)
            ]
            if not selected:
                continue
            skips = sorted({int(r["skip_heads"]) for r in selected})
            dice = np.array(
                [
                    np.nanmean([_float(r.get(metric)) for r in selected if int(r["skip_heads"]) == k])
                    for k in skips
                ]
            )
            nll = np.array(
                [
                    np.nanmean([_float(r.get("nll")) for r in selected if int(r["skip_heads"]) == k])
                    for k in skips
                ]
            )
            series.append((f"{method} ({suffix})", np.array(skips), dice, nll, style))
            if not clean_only:
                rows += [
                    [method, str(k), _number(d), _number(n)] for k, d, n in zip(skips, dice, nll, strict=True)
                ]
    document.table(["Method", "skipped heads k", f"mean {metric}", "mean NLL"], rows)
    path = plots.head_curves(series, folder / FIGURE_HEADS)
    document.image(
        FIGURE_HEADS,
        "Fig. 3: Dice and NLL as the number of skipped shallow heads grows "
        "(solid: all cases, dashed: clean cases).",
    )
    return [path]


def cost_table(data: EvaluationData, document: Document, reference: str) -> None:
    rows = []
    reference_time = np.nanmedian(data.values(reference, "time_s")) if data.subset(reference) else math.nan
    for method in data.methods:
        entry = data.cost.get(method, {})
        probe = entry.get("probe", {})
        times = data.values(method, "time_s")
        median = float(np.nanmedian(times)) if np.isfinite(times).any() else math.nan
        relative = (
            median / reference_time if math.isfinite(reference_time) and reference_time > 0 else math.nan
        )
        rows.append(
            [
                method,
                entry.get("kind", data.kinds.get(method, "")),
                f"{entry['parameters']:,}" if "parameters" in entry else "–",
                str(entry.get("forward_passes", "–")),
                _number(median, 3),
                _number(relative, 2),
                _number(_float(probe.get("seconds_warm")), 3),
                _number(_float(probe.get("peak_host_mb")), 0),
                _number(_float(probe.get("peak_cuda_mb")), 0),
                probe.get("device", probe.get("error", "–")),
            ]
        )
    document.table(
        [
            "Method",
            "kind",
            "parameters",
            "forward passes",
            "time per case (s, median)",
            f"× {reference}",
            "warm time (s)",
            "peak host memory (MB)",
            "peak CUDA memory (MB)",
            "probe device",
        ],
        rows,
    )


def scatter_section(
    data: EvaluationData, document: Document, folder: Path, metric: str, threshold: float
) -> list[Path]:
    panels = []
    for method in data.methods:
        columns = data.score_columns(method)
        score = main_score_for(data, method, columns)
        if score is None:
            continue
        subset = data.subset(method)
        panels.append(
            (
                method,
                scores.score_label(score),
                np.array([_float(r.get(score)) for r in subset]),
                np.array([_float(r.get(metric)) for r in subset]),
                np.array([r["condition"] == CLEAN for r in subset]),
            )
        )
    if not panels:
        return []
    path = plots.score_scatter(panels, metric, threshold, folder / FIGURE_SCATTER)
    document.image(FIGURE_SCATTER, f"Each method's main score against {metric} (dashed: the QC threshold).")
    return [path]


# ------------------------------------------------------------------------------------------ the report


def build_report(
    folder: str | Path,
    dice_threshold: float | None = None,
    qc_metric: str | None = None,
    reference: str | None = None,
) -> list[Path]:
    """Write report.md, report.html and the figures into ``folder``; return the paths written."""
    folder = Path(folder)
    data = load(folder)
    threshold = float(dice_threshold if dice_threshold is not None else data.run.get("dice_threshold", 0.8))
    metric = qc_metric or data.run.get("qc_metric", "dice_mean")
    if not any(metric in r for r in data.rows):
        raise InputError(f"{folder / CASES_FILE}: no column {metric!r} for the quality-control metric")
    reference = reference or data.run.get("reference") or data.methods[0]
    if reference not in data.methods:
        raise InputError(f"--reference {reference}: not among the evaluated methods {data.methods}")
    conditions = sorted({r["condition"] for r in data.rows})
    cases = sorted({r["case"] for r in data.rows})
    has_shifts = any(c != CLEAN for c in conditions)

    document = Document(f"Evaluation: {', '.join(data.methods)}")
    document.paragraph(
        f"Dataset: `{data.run.get('dataset', '?')}`; {len(cases)} cases × {len(conditions)} conditions "
        f"({', '.join(conditions)}); reference method **{reference}**; quality threshold {metric} < "
        f"{threshold:g}. Built {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from "
        f"`{CASES_FILE}`; rebuild with `layer-ensembles evaluate --report-only {folder}`."
    )
    document.paragraph(
        "Definitions: Dice is the mean over the foreground structures (union: all structures as one); MHD is "
        "the modified Hausdorff distance (max of the two mean nearest-neighbour distances between the voxel "
        "sets, mm); HD95 is the surface 95th-percentile Hausdorff distance; NLL is the mean over voxels of "
        "−log p(true class) under the ensemble's mean softmax. An empty prediction where the reference is "
        "not has Dice 0 and distances equal to the image diagonal. p: two-sided Wilcoxon signed-rank test "
        f"against {reference}, paired by case (over all conditions: each case's mean over its conditions, "
        "so n pairs = the number of cases, not of case × condition rows)."
    )
    written: list[Path] = []
    subsets = [(False, "all conditions")] + ([(True, "clean cases only")] if has_shifts else [])
    document.heading("Table 1: segmentation quality")
    for clean_only, label in subsets:
        document.heading(label.capitalize(), 3)
        table1(data, document, reference, clean_only)
    if has_shifts:
        document.heading(f"Mean {metric} per condition", 3)
        per_condition_table(data, document, metric)
    document.heading("Per structure (all conditions)", 3)
    per_class_table(data, document)

    document.heading("Table 2: do the image-level scores rank failures?")
    document.paragraph(
        "Spearman ρ between each score and Dice / MHD. AULA measures agreement (expect ρ > 0 "
        "with Dice); entropy, mutual information and variance measure disagreement (expect ρ < 0). Over "
        "all conditions, brackets are 95 % bootstrap intervals over cases (a case's conditions are not "
        "independent, so no pooled p-value is given); on clean cases (one row per case) p is Spearman's test."
    )
    for clean_only, label in subsets:
        document.heading(label.capitalize(), 3)
        table2(data, document, metric, clean_only)

    main_scores = {}
    for method in data.methods:
        chosen = main_score_for(data, method, report_failure._complete_scores(data, method, metric))
        if chosen:
            main_scores[method] = chosen
    report_failure.failure_detection_section(data, document, metric, threshold, reference, main_scores)
    report_failure.estimated_dice_section(data, document, metric)

    document.heading("Fig. 2: quality control")
    document.paragraph(
        "Cases are flagged from most to least uncertain; the curve is the fraction of all cases "
        f"that are poor ({metric} < {threshold:g}) and not yet flagged. QC AUC: trapezoid area "
        "over 50 flagged fractions; lower is better. All conditions together."
    )
    written += quality_control(data, document, folder, metric, threshold)
    written += scatter_section(data, document, folder, metric, threshold)

    document.heading("Fig. 3: skipping shallow heads")
    written += head_section(data, document, folder, metric)

    document.heading("Cost")
    document.paragraph(
        "Parameters and forward passes per window come from the model files; time per case is "
        "the median over the evaluation (preprocessing included); warm time and peak memory come "
        "from one prediction in a fresh process (host memory: growth of the resident set over "
        "the loaded model and image)."
    )
    cost_table(data, document, reference)

    written.append(atomic_write_text(folder / REPORT_MD, document.markdown(), overwrite=True))
    written.append(atomic_write_text(folder / REPORT_HTML, document.html(), overwrite=True))
    return written

"""Choose the layer ensemble's decision score on validation cases with shifts, held out by case.

Input: an ``evaluate --pair-curves`` run of the layer ensemble alone (its ``cases.csv``). Output, in
``--out``: ``selection.json`` (every candidate's metrics, the nested choice per fold and its held-out
metrics against the shipped score) and ``selection.md`` (the same as tables, for the report). Example::

    layer-ensembles evaluate --model LE=LayerEnsemblesSegmentation/Resources/Models/hippocampus_le3d.pt \\
        --dataset DATA/dataset.json --cases split.json:validation --shifts all --severities 2 3 \\
        --pair-curves --no-head-curve --no-cost-probe --out runs/le_pairs
    python Testing/select_decision_score.py --cases runs/le_pairs/cases.csv \\
        --out docs/evaluation/hippocampus_le3d/score_selection
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LayerEnsemblesSegmentation"))

from LayerEnsemblesLib.evaluation import calibration  # noqa: E402
from LayerEnsemblesLib.evaluation import failure_detection as fd  # noqa: E402
from LayerEnsemblesLib.evaluation import score_selection as ss  # noqa: E402
from LayerEnsemblesLib.evaluation.runner import read_csv  # noqa: E402

SHIPPED = "aula_union_from_{first}"
SHOWN = ("auroc", "eaurc", "aurc", "augrc", "augrc_binary", "spearman")


def _row(values: dict[str, float]) -> str:
    return " | ".join("–" if not np.isfinite(values[m]) else f"{values[m]:.3f}" for m in SHOWN)


def _fold_metrics(confidence, dice, folds, threshold) -> list[dict[str, float]]:
    return [ss.metrics_on(confidence[test], dice[test], threshold) for test in folds]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases", required=True, type=Path, help="cases.csv of an evaluate --pair-curves run"
    )
    parser.add_argument("--method", default="LE")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--skip-heads", type=int, default=2, help="the model's skip_heads (default 2)")
    parser.add_argument("--classes", nargs="+", default=["anterior", "posterior"])
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rows = [r for r in read_csv(args.cases) if r["method"] == args.method]
    ids = np.array([r["case"] for r in rows])
    dice = np.array([r["dice_mean"] for r in rows], float)
    found = ss.candidates(ss.features(rows, args.classes), args.skip_heads)
    shipped = SHIPPED.format(first=args.skip_heads)
    # deployable: computed by the engine from the kept heads' curves and the segmentation alone
    deployable = [
        c
        for c in found
        if c.name.endswith(f"_from_{args.skip_heads}")
        or c.name.startswith(("pairs_", "last_", "worst_", "learned"))
    ]
    folds = ss.case_folds(ids, args.folds, args.seed)
    shipped_confidence = next(c.fixed for c in found if c.name == shipped)
    shipped_folds = _fold_metrics(shipped_confidence, dice, folds, args.threshold)
    document: dict = {
        "cases_file": str(args.cases),
        "rows": int(ids.size),
        "cases": int(np.unique(ids).size),
        "threshold": args.threshold,
        "folds": args.folds,
        "shipped": shipped,
        "candidates": {},
        "nested": {},
    }
    lines = [
        f"{np.unique(ids).size} cases × {ids.size // np.unique(ids).size} conditions; failure: Dice < "
        f"{args.threshold:g}; baseline: `{shipped}` (normalised union AULA of the kept heads, the "
        "decision score before this study).",
        "",
        "All candidates, every row (fixed scores need no fitting; `learned_pairs_volume` is pooled from "
        f"its {args.folds} held-out folds, fitted on the others):",
        "",
        "| candidate | description | AUROC ↑ | E-AURC ↓ | AURC ↓ | AUGRC ↓ | QC AUC ↓ | ρ ↑ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    selection = ss.nested_selection(ids, dice, found, args.threshold, outer=args.folds, seed=args.seed)
    for candidate in found:
        confidence = candidate.fixed if candidate.fit is None else selection["every"][candidate.name]
        values = ss.metrics_on(confidence, dice, args.threshold)
        document["candidates"][candidate.name] = {"description": candidate.description, **values}
        lines.append(f"| `{candidate.name}` | {candidate.description} | {_row(values)} |")

    for label, pool in (("all candidates", found), ("deployable candidates", deployable)):
        chosen = ss.nested_selection(ids, dice, pool, args.threshold, outer=args.folds, seed=args.seed)
        chosen_folds = _fold_metrics(chosen["selected"], dice, folds, args.threshold)
        summary = {
            "picks": chosen["picks"],
            "held_out_mean": {m: float(np.nanmean([f[m] for f in chosen_folds])) for m in SHOWN},
            "shipped_mean": {m: float(np.nanmean([f[m] for f in shipped_folds])) for m in SHOWN},
            "folds_better": {
                m: int(
                    sum(
                        (a[m] < b[m]) if fd.LOWER_IS_BETTER.get(m) else (a[m] > b[m])
                        for a, b in zip(chosen_folds, shipped_folds, strict=True)
                    )
                )
                for m in SHOWN
            },
        }
        document["nested"][label] = summary
        lines += [
            "",
            f"Nested selection over {label} (inner {4}-fold E-AURC by case; picks per outer fold: "
            f"{', '.join(f'`{p}`' for p in chosen['picks'])}), mean over the {args.folds} held-out folds:",
            "",
            "| score | AUROC ↑ | E-AURC ↓ | AURC ↓ | AUGRC ↓ | QC AUC ↓ | ρ ↑ |",
            "|---|---|---|---|---|---|---|",
            f"| selected (held out) | {_row(summary['held_out_mean'])} |",
            f"| baseline `{shipped}` | {_row(summary['shipped_mean'])} |",
            "| folds where selected is better | "
            + " | ".join(f"{summary['folds_better'][m]}/{args.folds}" for m in SHOWN)
            + " |",
        ]
    lines += [
        "",
        "Threshold for sensitivity 0.9 chosen on 4 folds by case and applied to the held-out fold "
        "(pooled over the 5 folds):",
        "",
        "| score | held-out sensitivity | held-out specificity | flagged |",
        "|---|---|---|---|",
    ]
    for name in dict.fromkeys([shipped, *document["nested"]["deployable candidates"]["picks"]]):
        confidence = next(c.fixed for c in found if c.name == name)
        flagged = np.zeros(ids.size, bool)
        for test in folds:
            chosen = calibration.choose_threshold(confidence[~test], dice[~test], args.threshold, 0.9)
            flagged[test] = confidence[test] < chosen.threshold
        poor = dice < args.threshold
        result = {
            "sensitivity": float(flagged[poor].mean()),
            "specificity": float((~flagged[~poor]).mean()),
            "flagged": int(flagged.sum()),
        }
        document.setdefault("held_out_threshold", {})[name] = result
        lines.append(
            f"| `{name}` | {result['sensitivity']:.3f} | {result['specificity']:.3f} | "
            f"{result['flagged']} / {ids.size} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "selection.json").write_text(json.dumps(document, indent=2), encoding="utf-8")
    (args.out / "selection.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

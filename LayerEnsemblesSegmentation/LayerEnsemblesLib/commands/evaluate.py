"""``layer-ensembles evaluate``: does the uncertainty mean something on your labelled data?

Runs one or more model files (layer ensembles and the baselines exported by
:mod:`LayerEnsemblesLib.evaluation.baselines`) over a labelled dataset, clean and with synthetic
acquisition shifts, writes ``cases.csv`` (one row per method, case and condition) and a report
(``report.md``, ``report.html`` and PNG figures) that ``--report-only`` rebuilds from the CSV.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate models and their uncertainty on labelled data (the paper's tables and figures)",
        description="Evaluate segmentation quality and uncertainty of one or more models on labelled data, "
        "optionally under synthetic acquisition shifts, and write cases.csv plus a report. "
        "With --report-only DIR, rebuild DIR's report (report.md, report.html, figures) from its "
        "cases.csv without running any model; those report files are replaced.",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=MODEL.pt[#member=K]",
        help="a method to evaluate (repeat for several); the first layer ensemble is the reference. "
        "#member=K runs member K (index or name, e.g. fold_0) of a deep ensemble whose members keep their "
        "heads as its own layer ensemble: e.g. DE=folds.pt and LE=folds.pt#member=0 compare nnU-Net's "
        "fold ensemble with one fold's decoder heads",
    )
    parser.add_argument(
        "--dataset", help="an MSD-style dataset.json with a 'training' list of image/label pairs"
    )
    parser.add_argument("--images", help="a folder of images (with --labels; files matched by name)")
    parser.add_argument("--labels", help="a folder of label maps with the same file names as --images")
    parser.add_argument(
        "--cases",
        metavar="FILE.json[:KEY]",
        help="evaluate only these cases, e.g. a training run's split.json:validation",
    )
    parser.add_argument("--max-cases", type=int, help="evaluate at most this many cases (quick checks)")
    parser.add_argument(
        "--shifts",
        default="none",
        help="synthetic shifts: all, none, or a comma-separated list of intensity, bias_field, "
        "noise, blur, low_resolution, crop, gamma, ghosting (default: none)",
    )
    parser.add_argument(
        "--severities",
        nargs="+",
        default=None,
        metavar="S",
        help="shift severities among 1 2 3 (default: all three)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the shifts' random draws (default 0)")
    parser.add_argument(
        "--dice-threshold",
        type=float,
        default=None,
        help="a case is poor below this Dice, for the quality-control curve (default 0.8)",
    )
    parser.add_argument(
        "--qc-metric",
        default=None,
        help="the Dice column that defines poor cases: dice_mean (default), dice_union or dice_<class>",
    )
    parser.add_argument(
        "--reference", help="the method the others are tested against (default: first layer ensemble)"
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument(
        "--no-head-curve",
        action="store_true",
        help="skip Fig. 3 (Dice and NLL against the number of skipped heads)",
    )
    parser.add_argument(
        "--no-cost-probe",
        action="store_true",
        help="skip the per-method time and memory probe in a fresh process",
    )
    parser.add_argument(
        "--pair-curves",
        action="store_true",
        help="also record, for layer ensembles, each adjacent-head Dice over all heads (pair_*), the "
        "predicted volumes and the maps' foreground means, to explore decision scores",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing evaluation in --out")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted evaluation in --out")
    parser.add_argument(
        "--report-only", metavar="DIR", help="rebuild DIR's report from its cases.csv and stop"
    )
    parser.set_defaults(run=run)


def _check_threshold(value: float | None) -> None:
    if value is not None and not 0 < value <= 1:
        raise InputError(f"--dice-threshold {value}: must be in (0, 1]")


def run(args: argparse.Namespace) -> int:
    from ..evaluation import report, runner, shifts
    from ..evaluation.datasets import select_cases

    _check_threshold(args.dice_threshold)
    if args.report_only:
        if args.model:
            raise InputError("--report-only rebuilds a report from cases.csv; it takes no --model")
        written = report.build_report(args.report_only, args.dice_threshold, args.qc_metric, args.reference)
        print(f"wrote {', '.join(str(p) for p in written)}")
        return 0
    if not args.out:
        raise InputError("--out DIR is required (or --report-only DIR)")
    if args.overwrite and args.resume:
        raise InputError("give either --overwrite or --resume, not both")
    existing = Path(args.out) / runner.CASES_FILE
    if existing.exists() and not (args.overwrite or args.resume):
        raise InputError(
            f"{args.out}: already holds an evaluation ({runner.CASES_FILE}); use --resume to continue it, "
            "--overwrite to replace it, or --report-only to rebuild its report"
        )
    methods = runner.load_methods(args.model)
    if args.resume and existing.exists():  # before any work: a resume must use the same models
        runner.check_resume_models(Path(args.out) / runner.RUN_FILE, methods)
    cases, description = select_cases(args.dataset, args.images, args.labels, args.cases, args.max_cases)
    settings = runner.EvaluationSettings(
        shifts=shifts.parse_shifts(args.shifts),
        severities=shifts.parse_severities(args.severities),
        seed=args.seed,
        dice_threshold=args.dice_threshold if args.dice_threshold is not None else 0.8,
        qc_metric=args.qc_metric or "dice_mean",
        reference=args.reference,
        device=args.device,
        head_curve=not args.no_head_curve,
        cost_probe=not args.no_cost_probe,
        pair_curves=args.pair_curves,
    )
    from .sharding import RankRun

    conditions = len(runner.conditions_for(settings.shifts, settings.severities))
    ranks = RankRun.start(args.device)
    settings.device = ranks.device_request
    if ranks.is_main:
        print(
            f"evaluating {len(methods)} method(s) on {len(cases)} case(s) × {conditions} condition(s) from "
            f"{description}" + (f" on {ranks.world_size} ranks" if ranks.distributed else ""),
            file=sys.stderr,
        )
    try:
        with ranks.guard(
            lambda: runner.unfinished_cases(args.out, methods, cases, settings),
            rerun="rerun the same command with --resume",
        ):
            runner.run_evaluation(
                methods,
                cases,
                settings,
                args.out,
                dataset=description,
                overwrite=args.overwrite,
                resume=args.resume,
                progress=not args.no_progress,
                log=lambda message: print(message, file=sys.stderr),
                rank_run=ranks,
            )
    finally:
        ranks.finish()
    if not ranks.is_main:
        return 0
    written = report.build_report(args.out)
    print(f"wrote {args.out}/{runner.CASES_FILE} and {', '.join(p.name for p in written)}")
    failed = [r for r in runner.read_csv(Path(args.out) / runner.CASES_FILE) if runner.is_failed_row(r)]
    if failed:  # the report is built without them (NaN metrics); rerun with --resume after fixing them
        print(
            f"error: {len(failed)} row(s) failed; see the error column of {runner.CASES_FILE}",
            file=sys.stderr,
        )
        return 2
    return 0

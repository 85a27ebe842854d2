"""``layer-ensembles calibrate``: choose the AULA threshold that flags poor segmentations.

On labelled validation data (optionally widened with synthetic shifts, or taken from an existing
evaluation's ``cases.csv``), pick the smallest normalised-AULA threshold that flags the requested
fraction (sensitivity) of cases with Dice below the target, report the specificity it gives, and
write it into a copy of the model (``--out``) or the model itself (``--in-place --overwrite``). The
CLI and the Slicer slider then use it as their default.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InputError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="choose and store the AULA threshold that flags poor segmentations",
        description="Pick the normalised-AULA threshold that flags cases below a target Dice with a chosen "
        "sensitivity on labelled validation data, report the specificity, and write the threshold into "
        "the model's metadata.",
    )
    parser.add_argument("--model", required=True, help="a layer-ensemble model file")
    parser.add_argument("--dataset", help="an MSD-style dataset.json")
    parser.add_argument("--images", help="a folder of images (with --labels)")
    parser.add_argument("--labels", help="a folder of label maps with the same file names")
    parser.add_argument(
        "--cases", metavar="FILE.json[:KEY]", help="only these cases, e.g. split.json:validation"
    )
    parser.add_argument("--max-cases", type=int, help="at most this many cases")
    parser.add_argument(
        "--from-csv",
        metavar="CASES.csv",
        help="use the scores and Dice of an earlier `evaluate` run instead of running the model",
    )
    parser.add_argument(
        "--method",
        help="with --from-csv: the method's name in the CSV (default: the only layer ensemble in it)",
    )
    parser.add_argument(
        "--shifts", default="none", help="synthetic shifts to add poor cases: all, none or a list"
    )
    parser.add_argument("--severities", nargs="+", default=None, metavar="S", help="shift severities (1 2 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shifts (default 0)")
    parser.add_argument(
        "--target-dice", type=float, help="cases below this Dice should be flagged (with --sensitivity)"
    )
    parser.add_argument(
        "--sensitivity",
        type=float,
        help="fraction of those cases the threshold must flag, e.g. 0.9 (with --target-dice)",
    )
    parser.add_argument(
        "--quality-map",
        action="store_true",
        help="also fit the estimated-Dice map (isotonic score -> Dice with a 10th-90th percentile "
        "interval), report its 5-fold held-out error by case, and store it in the model",
    )
    parser.add_argument(
        "--metric", default="dice_mean", help="the Dice column: dice_mean (default), dice_union, dice_<class>"
    )
    parser.add_argument(
        "--score",
        default=None,
        help="the score column (default: the model's decision_score, the one the engine decides on; "
        "another score is reported but not written)",
    )
    parser.add_argument(
        "--decision-score",
        metavar="SCORE",
        help="make SCORE (e.g. aula_norm_class_mean) the model's decision score; needs a threshold "
        "(--target-dice, --sensitivity) and calibrates it, and the quality map, on SCORE",
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--out", help="write the calibrated model to this new file")
    parser.add_argument("--in-place", action="store_true", help="write the threshold into --model itself")
    parser.add_argument("--overwrite", action="store_true", help="allow replacing an existing file")
    parser.add_argument("--json", action="store_true", help="print the calibration as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def _pairs_from_csv(path: str, method: str | None, score: str, metric: str) -> tuple[list, list, str, list]:
    from ..evaluation.scores import CLASS_MEAN
    from ..evaluation.tables import read_csv

    # the class mean is derived from the per-class columns when the file predates it
    rows = read_csv(path, required=("method", metric) + (() if score == CLASS_MEAN else (score,)))
    if rows and score not in rows[0]:
        raise InputError(f"{path}: no column {score!r} and no per-class aula_norm_* columns to derive it")
    layer_ensembles = sorted(
        {
            r["method"]
            for r in rows
            if r.get("kind") == "layer_ensemble" and score in r and r.get(score) == r.get(score)
        }
    )
    if method is None:
        if len(layer_ensembles) != 1:
            raise InputError(
                f"{path}: pass --method, one of {layer_ensembles or 'the methods'} "
                f"(layer ensembles with {score})"
            )
        method = layer_ensembles[0]
    selected = [r for r in rows if r["method"] == method]
    if not selected:
        raise InputError(f"{path}: no rows for method {method!r}")
    return (
        [r[score] for r in selected],
        [r[metric] for r in selected],
        f"{path} (method {method})",
        [r["case"] for r in selected],
    )


def _pairs_from_data(args: argparse.Namespace) -> tuple[list, list, str, list]:
    from ..evaluation import runner, shifts
    from ..evaluation.datasets import select_cases

    methods = runner.load_methods([f"model={args.model}"])
    if not methods[0].has_aula:
        raise InputError(f"{args.model}: AULA needs a layer-ensemble model keeping at least two heads")
    cases, description = select_cases(args.dataset, args.images, args.labels, args.cases, args.max_cases)
    settings = runner.EvaluationSettings(
        shifts=shifts.parse_shifts(args.shifts),
        severities=shifts.parse_severities(args.severities),
        seed=args.seed,
        device=args.device,
        head_curve=False,
        cost_probe=False,
    )
    conditions = runner.conditions_for(settings.shifts, settings.severities)
    bar = runner._progress(len(cases) * len(conditions), not args.no_progress)
    scores, dice, case_ids = [], [], []
    try:
        for rows, _ in runner.evaluate_cases(
            methods, cases, conditions, settings, bar=bar, with_distances=False
        ):
            for row in rows:
                if args.score not in row or args.metric not in row:
                    raise InputError(f"{args.model}: no {args.score!r} or {args.metric!r} for {row['case']}")
                scores.append(row[args.score])
                dice.append(row[args.metric])
                case_ids.append(row["case"])
    finally:
        if bar is not None:
            bar.close()
    shifted = f", shifts {','.join(settings.shifts)}" if settings.shifts else ""
    description = f"{description}: {len(cases)} cases × {len(conditions)} conditions{shifted}"
    return scores, dice, description, case_ids


def _warn_if_other_model(csv_path: str, data: str, model: str) -> None:
    """The CSV's scores belong to the model its evaluation ran; say so when that is another file."""
    run_file = Path(csv_path).parent / "run.json"
    if not run_file.is_file():
        return
    try:
        methods = json.loads(run_file.read_text(encoding="utf-8")).get("methods", [])
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return
    method = data.rsplit("(method ", 1)[-1].rstrip(")")
    paths = [m.get("path") for m in methods if m.get("name") == method]
    if paths and Path(paths[0]).resolve() != Path(model).resolve():
        print(
            f"warning: {csv_path} scored {paths[0]}, not {model}; the threshold may not fit this model",
            file=sys.stderr,
        )


def run(args: argparse.Namespace) -> int:
    from ..contract import read_metadata
    from ..decision_scores import decision_score_of
    from ..evaluation.calibration import check_targets, choose_threshold, write_threshold

    wants_threshold = args.target_dice is not None or args.sensitivity is not None
    if wants_threshold and (args.target_dice is None or args.sensitivity is None):
        raise InputError("a threshold needs both --target-dice and --sensitivity")
    if not wants_threshold and not args.quality_map:
        raise InputError("give --target-dice and --sensitivity (a threshold), --quality-map, or both")
    if wants_threshold:
        check_targets(args.target_dice, args.sensitivity)  # before any case is run
    if args.in_place and args.out:
        raise InputError("give either --out FILE or --in-place, not both")
    if args.in_place and not args.overwrite:
        raise InputError(f"{args.model}: --in-place replaces the model file; add --overwrite to confirm")
    destination = Path(args.model) if args.in_place else Path(args.out) if args.out else None
    if destination is not None and destination.exists() and not args.overwrite:
        raise InputError(f"{destination}: already exists (use --overwrite to replace it)")
    metadata = read_metadata(args.model)
    if metadata.kind != "layer_ensemble":
        raise InputError(
            f"{args.model}: a {metadata.kind} model has no AULA; calibrate a layer-ensemble model"
        )
    if args.decision_score:
        from ..decision_scores import is_known

        if not is_known(args.decision_score):
            raise InputError(f"--decision-score {args.decision_score}: not an aula_norm_* score")
        if args.score and args.score != args.decision_score:
            raise InputError("--score and --decision-score name different scores")
    args.score = args.score or args.decision_score or decision_score_of(metadata)
    decides_on = args.decision_score or decision_score_of(metadata)
    if destination is not None and args.score != decides_on:  # refused before any case is run
        raise InputError(
            f"--score {args.score}: the engine accepts or flags a case on {decides_on}, so only a "
            f"threshold on {decides_on} can be written into this model (drop --out/--in-place to compare)"
        )
    if args.from_csv:
        scores, dice, data, case_ids = _pairs_from_csv(args.from_csv, args.method, args.score, args.metric)
        _warn_if_other_model(args.from_csv, data, args.model)
    else:
        scores, dice, data, case_ids = _pairs_from_data(args)
    calibration = (
        choose_threshold(scores, dice, args.target_dice, args.sensitivity, args.score)
        if wants_threshold
        else None
    )
    quality, held_out = _quality_map(args, scores, dice, case_ids, data) if args.quality_map else (None, None)
    if args.json:
        from dataclasses import asdict

        document = {**(asdict(calibration) if calibration else {}), "data": data}
        if quality is not None:
            document.update(quality_map=quality.to_dict(), held_out=held_out)
        print(json.dumps(document, indent=2))
    else:
        if calibration is not None:
            print(calibration.summary())
        if quality is not None:
            print(_quality_summary(quality, held_out))
    if calibration is not None and calibration.sensitivity < args.sensitivity:
        print(
            f"warning: only sensitivity {calibration.sensitivity:.3f} is reachable (poor cases with AULA 1)",
            file=sys.stderr,
        )
    if destination is None:
        print(
            "no file written (pass --out FILE or --in-place --overwrite to store the threshold)",
            file=sys.stderr,
        )
        return 0
    write_threshold(
        args.model,
        calibration,
        destination,
        overwrite=args.overwrite,
        data=data,
        quality_map=quality,
        held_out=held_out,
        decision_score=args.decision_score,
    )
    written = [f"aula_threshold {calibration.threshold:.4f}"] if calibration else []
    written += [f"quality_map with {len(quality.scores)} knots"] if quality else []
    print(f"wrote {destination} ({', '.join(written)})")
    return 0


def _quality_map(args: argparse.Namespace, scores, dice, case_ids, data: str):
    """The map fitted on every case, and its held-out error from a 5-fold cross-validation by case."""
    from dataclasses import asdict

    from ..evaluation.quality_fit import cross_validate, fit_quality_map

    quality = fit_quality_map(scores, dice, args.score, args.metric, case_ids=case_ids, data=data)
    try:
        held_out = asdict(cross_validate(case_ids, scores, dice, args.score, folds=5))
    except InputError as error:  # too few cases to hold some out: the map stands, unchecked
        print(f"warning: no held-out check of the quality map ({error})", file=sys.stderr)
        held_out = None
    return quality, held_out


def _quality_summary(quality, held_out: dict | None) -> str:
    text = (
        f"quality map ({quality.score} -> {quality.metric}): {len(quality.scores)} knots from "
        f"{quality.rows} rows of {quality.cases} cases; e.g. "
        f"{quality.estimate(quality.scores[len(quality.scores) // 2]).text()} at "
        f"{quality.scores[len(quality.scores) // 2]:.3f}"
    )
    if held_out:
        text += (
            f"; held out ({held_out['folds']}-fold by case): MAE {held_out['mae']:.3f} (a constant "
            f"estimate: {held_out['mae_constant']:.3f}), interval coverage {held_out['coverage']:.2f}"
        )
    return text

"""``layer-ensembles segment INPUT... --model MODEL --out DIR``: segment, score with AULA, write a report.

Per case (named after the input file without its extensions, or after the DICOM folder):

* ``<case>_seg<ext>``: the label map on the input's grid (label values from the model);
* ``<case>_<map><ext>``: each requested voxel map (agreement by default);
* ``<case>_probabilities<ext>`` with ``--probabilities``: the mean softmax, one component per class;
* ``<case>_report.json``: AULA (raw and normalised, per class and union), the agreement curve with its
  pair labels, the decision with its threshold and the threshold's source, the estimated Dice with its
  interval when the model carries a quality map (``estimated_dice``, ``estimated_dice_text``; the text
  says why when there is none), empty flags, the device and the timings. It is written last, so its
  presence marks a complete case.

``<ext>`` keeps the input's format family: NRRD inputs give ``.nrrd``, MetaImage inputs ``.mha``,
everything else (NIfTI, DICOM, ...) ``.nii.gz``; ``--format`` overrides it. With several inputs,
``summary.csv`` lists the cases by the decision score (normalised AULA), lowest (most in need of
review) first, with the estimated Dice beside it (empty, and the reason in ``estimated_dice_text``,
without a quality map), and failed cases last. A failing case prints one error line and the others
still run; the exit code is 2 when any case failed.

Reruns: a case whose report exists is skipped and listed with the scores of that report (unless
``--overwrite``), so rerunning an interrupted command finishes only the missing cases. Archives:
``--cases-from`` reads the inputs from a file, and under ``torchrun`` the cases are shared among the
ranks (:mod:`.sharding`); rank 0 writes the one summary, the same as a single process would.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

from ..errors import InputError, first_line
from ..fileio import Output, atomic_write_text, image_output, json_output, read_image, write_outputs
from .outputs import check_output_folder, check_targets, previous_outputs, remove_stale
from .segment_progress import TerminalProgress

KNOWN_SUFFIXES = (
    ".nii.gz",
    ".nii",
    ".nrrd",
    ".nhdr",
    ".mha",
    ".mhd",
    ".dcm",
    ".dicom",
    ".tif",
    ".tiff",
    ".png",
    ".jpg",
    ".vtk",
    ".hdr",
    ".img",
    ".gz",
)
FORMATS = ("auto", "nii.gz", "nrrd", "mha")
SUMMARY_NAME = "summary.csv"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment images and score each with AULA (one forward pass per window)",
        description="Segment images with a layer-ensembles model file and score each case with AULA; cases "
        "whose normalised AULA is below the threshold are flagged for review.",
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="image files SimpleITK reads (NIfTI, NRRD, MHA, ...) or DICOM series folders",
    )
    parser.add_argument(
        "--cases-from",
        metavar="FILE[:COLUMN]",
        help="read the inputs from FILE, one path a line, or from COLUMN of a CSV file (relative paths "
        "are relative to FILE's folder); added after any INPUT given",
    )
    parser.add_argument("--model", required=True, help="a model file written by `layer-ensembles export`")
    parser.add_argument(
        "--member",
        metavar="K",
        help="run member K (an index from 0, or a name such as fold_2) of a deep ensemble whose members keep "
        "their heads (`convert nnunet --folds all`) as that member's own layer ensemble (one member's cost)",
    )
    parser.add_argument("--out", required=True, help="output folder (created if needed)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    heads = parser.add_mutually_exclusive_group()
    heads.add_argument(
        "--skip-heads",
        type=int,
        metavar="K",
        help="drop the K shallowest heads (default: the model's own setting)",
    )
    heads.add_argument(
        "--heads",
        metavar="FIRST:STOP",
        type=_head_range,
        help="keep heads FIRST..STOP-1 (0-based, shallow to deep; STOP may be omitted)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        help="accept a case when its decision score (a normalised AULA; `info` names it) reaches this "
        "value (default: the model's calibrated threshold, else 0.90)",
    )
    parser.add_argument(
        "--maps",
        default="agreement",
        type=_map_list,
        help="voxel maps to write: a comma list of agreement, entropy, mutual_information, "
        "variance, or all, or none (default: agreement)",
    )
    parser.add_argument(
        "--probabilities", action="store_true", help="also write the mean class probabilities"
    )
    parser.add_argument(
        "--window",
        type=_window,
        metavar="Z,Y,X",
        help="sliding-window size in network voxels (default: the model's patch size)",
    )
    parser.add_argument("--overlap", type=float, default=0.5, help="window overlap fraction (default 0.5)")
    parser.add_argument(
        "--batch-windows",
        type=int,
        default=1,
        metavar="B",
        help="sliding windows per forward pass (default 1; more is faster on a GPU, same result)",
    )
    parser.add_argument(
        "--stitch-device",
        default="auto",
        help="where the windows are blended: auto (the compute device, or the CPU when the GPU is "
        "short of memory), same, cpu, cuda or cuda:N",
    )
    parser.add_argument(
        "--memory-budget",
        type=float,
        metavar="GB",
        help="shrink the window so that the estimated memory stays within GB",
    )
    parser.add_argument(
        "--mixed-precision",
        action="store_true",
        help="bf16 autocast on CUDA (off by default: slower than fp32 for 3D instance-norm U-Nets "
        "on an H200)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="output image format (default: keep the input's family, NIfTI otherwise)",
    )
    parser.add_argument(
        "--save-heads",
        action="store_true",
        help="also write <case>_heads.pt, a results bundle from which the kept heads and threshold can "
        "be changed later without the network",
    )
    parser.add_argument(
        "--head-precision",
        choices=("float32", "float16"),
        default="float32",
        help="precision of the retained head outputs: float16 rounds them once after the forward pass, "
        "halving the bundle, and every result (this one and any recombination) is computed from them",
    )
    parser.add_argument(
        "--progress-json",
        action="store_true",
        help="print only JSON lines on stdout (started, progress, case_done, case_failed, finished), "
        "for a parent process such as the Slicer module",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing output files (and remove the previous run's outputs of a case that this "
        "run does not write again)",
    )
    parser.add_argument(
        "--allow-large",
        action="store_true",
        help="run inputs whose resampling to the model's spacing multiplies the voxels (refused by default)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-case lines")
    parser.add_argument("--debug", action="store_true", help="show the traceback of unexpected errors")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.progress_json:
        from .segment_events import run_with_events

        return run_with_events(args, _run)
    return _run(args, None)


def _run(args: argparse.Namespace, events) -> int:
    from ..inference import Predictor
    from ..inference.results import resolve_head_range, resolve_threshold
    from .manifest import read_manifest
    from .sharding import RankRun

    out = Path(args.out)
    inputs = [Path(p) for p in args.inputs] + (read_manifest(args.cases_from) if args.cases_from else [])
    if not inputs:
        raise InputError("no inputs: give INPUT files or folders, or --cases-from FILE")
    summary_path = out / SUMMARY_NAME
    names = _case_names(inputs)
    if len(inputs) > 1 and not args.overwrite and not _summary_replaceable(summary_path, names):
        raise InputError(f"{summary_path}: already exists (use --overwrite to replace it)")
    ranks = RankRun.start(args.device)
    try:
        predictor = Predictor(
            args.model,
            device=ranks.device_request,
            window_size=args.window,
            overlap=args.overlap,
            memory_budget_gb=args.memory_budget,
            mixed_precision=args.mixed_precision,
            head_precision=args.head_precision,
            allow_large=args.allow_large,
            batch_windows=args.batch_windows,
            stitch_device=args.stitch_device,
            member=args.member,
        )
        # argument problems are the same for every case: report them once, before any work
        metadata = predictor.metadata
        resolve_head_range(
            len(predictor.member_names), metadata.skip_heads, args.skip_heads, args.heads, args.model
        )
        resolve_threshold(args.threshold, metadata, args.model)
        check_output_folder(out)  # before any case: an unwritable --out must not cost any inference
        replace_summary = args.overwrite or summary_path.exists()  # checked above: a rerun of these cases
        if len(inputs) > 1:
            check_targets([summary_path], replace_summary)
        progress = events or TerminalProgress(len(inputs), enabled=not args.quiet and ranks.is_main)
        progress.started(args.model, str(predictor.device))
        mine = ranks.split(inputs)

        def unfinished() -> list[str]:
            return [n or p.name for p, n in zip(inputs, names, strict=True) if not _done(out, n)]

        with ranks.guard(unfinished):
            rows = _run_cases(predictor, [(inputs[i], names[i]) for i in mine], out, args, ranks, progress)
            rows = ranks.gather(rows)
        bugs = sum(1 for row in rows if row.pop("bug", False))  # bad input exits 2; a bug exits 1
        failures = sum(1 for row in rows if row["status"] != "ok")
        if len(inputs) > 1 and ranks.is_main:
            atomic_write_text(summary_path, _summary_csv(rows, metadata), overwrite=replace_summary)
        progress.finished(len(rows) - failures, failures, summary_path if len(inputs) > 1 else None)
    finally:
        ranks.finish()
    return 1 if bugs else 2 if failures else 0


def _run_cases(predictor, cases: list, out: Path, args: argparse.Namespace, ranks, progress) -> list[dict]:
    """This rank's cases: finished ones from their reports, the others computed (reading ahead)."""
    from ..inference.prefetch import prefetched

    rows: list[dict[str, Any]] = []
    todo = []
    for path, case in cases:
        if case is not None and not args.overwrite and _done(out, case):
            rows.append(_skipped_row(path, case, out, progress))
            progress.case_done()
        else:
            todo.append((path, case))
    computed = 0
    ahead = 1 if len(todo) > 1 else 0
    for (path, case), load in prefetched(todo, lambda item: read_image(item[0]), ahead):
        try:
            if case is None:
                raise InputError(f"{path}: gives the same case name as an earlier input; rename one of them")
            report = _segment_case(predictor, path, case, out, args, progress, load)
            rows.append(_summary_row(case, path, report))
            progress.case_result(case, path, report)
        except InputError as error:
            progress.case_failed(case or path.name, path, str(error))
            rows.append(_failed_row(path, case, str(error)))
        except Exception as error:  # noqa: BLE001 - one broken case must not stop the others
            if args.debug:
                raise
            progress.case_failed(
                case or path.name, path, f"{path}: {type(error).__name__}: {first_line(error)}"
            )
            rows.append(_failed_row(path, case, f"{type(error).__name__}: {error}"))
            rows[-1]["bug"] = not isinstance(error, (OSError, MemoryError))  # a full disk is not a bug
        progress.case_done()
        computed += 1
        ranks.after_case(computed)
    progress.close()
    return rows


def _done(out: Path, case: str | None) -> bool:
    """A case is finished when its report exists: the report is written last."""
    return case is not None and (out / f"{case}_report.json").is_file()


def _skipped_row(path: Path, case: str, out: Path, progress) -> dict[str, Any]:
    report_path = out / f"{case}_report.json"
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        row = _summary_row(case, path, report)
    except (OSError, ValueError, KeyError, TypeError) as error:
        message = f"{report_path}: unreadable report of an earlier run ({first_line(error)}); use --overwrite"
        progress.error(message)
        return _failed_row(path, case, message)
    report.setdefault("report", str(report_path))
    progress.case_skipped(case, path, report)
    return row


def _failed_row(path: Path, case: str | None, error: str) -> dict[str, Any]:
    return {"case": case or path.name, "input": str(path), "status": "failed", "error": error}


def _summary_replaceable(path: Path, names: list[str | None]) -> bool:
    """No summary yet, or one of an earlier run over some of these cases (a rerun may refresh it)."""
    if not path.exists():
        return True
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            listed = {row["case"] for row in csv.DictReader(handle)}
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(listed) and listed <= {n for n in names if n is not None}


def case_name(path: Path) -> str:
    """The input's name without its image extensions (``a/b/case01.nii.gz`` gives ``case01``)."""
    name = path.name.rstrip("/")
    if path.is_dir():
        return name
    lowered = name.lower()
    for suffix in KNOWN_SUFFIXES:
        if lowered.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return path.stem or name


def output_extension(path: Path, choice: str) -> str:
    if choice != "auto":
        return "." + choice
    lowered = path.name.lower()
    if lowered.endswith((".nrrd", ".nhdr")):
        return ".nrrd"
    if lowered.endswith((".mha", ".mhd")):
        return ".mha"
    return ".nii.gz"


def _segment_case(
    predictor, path: Path, case: str, out: Path, args: argparse.Namespace, progress, load=None
) -> dict:
    from ..inference.bundle import BUNDLE_SUFFIX, bundle_output

    extension = output_extension(path, args.format)
    targets = {"segmentation": out / f"{case}_seg{extension}"}
    for name in args.maps:
        targets[name] = out / f"{case}_{name}{extension}"
    if args.probabilities:
        targets["probabilities"] = out / f"{case}_probabilities{extension}"
    if args.save_heads:
        targets["heads"] = out / f"{case}{BUNDLE_SUFFIX}"
    report_path = out / f"{case}_report.json"
    # without a report, files under the case's names are an interrupted run's partial outputs
    leftovers = [target.name for target in targets.values() if target.exists() and not target.is_dir()]
    if leftovers and not args.overwrite:
        progress.notice(f"{case}: replacing the partial outputs of an unfinished run: {', '.join(leftovers)}")
    replace = args.overwrite or bool(leftovers)
    check_targets([*targets.values(), report_path], replace)  # before this case's inference
    previous = previous_outputs(report_path, case) if args.overwrite else []
    start = time.perf_counter()
    image = read_image(path) if load is None else load()
    read_seconds = time.perf_counter() - start
    prediction = predictor.predict(
        image,
        skip_heads=args.skip_heads,
        head_range=args.heads,
        threshold=args.threshold,
        maps=args.maps,
        progress=progress.window_callback(case),
        source=str(path),
    )
    write_start = time.perf_counter()
    images = {"segmentation": prediction.segmentation, **prediction.maps}
    if args.probabilities:
        images["probabilities"] = prediction.probabilities
    report = prediction.to_report()
    report["case"] = case
    report["bundle"] = str(targets["heads"]) if args.save_heads else None
    report["report"] = str(report_path)
    report["outputs"] = {name: str(target) for name, target in targets.items()}
    report["timings"]["read"] = round(read_seconds, 4)
    # all files of the case are written, read back and renamed together, the report last
    outputs = [
        (target, bundle_output(prediction) if name == "heads" else image_output(images[name]))
        for name, target in targets.items()
    ]
    outputs.append((report_path, _ReportOutput(report, write_start)))
    write_outputs(outputs, overwrite=replace)
    remove_stale(previous, targets.values())
    return report


class _ReportOutput(Output):
    """The report, serialised when it is written so that its write time covers the images."""

    def __init__(self, report: dict, write_start: float) -> None:
        def write(path: Path) -> None:
            report["timings"]["write"] = round(time.perf_counter() - write_start, 4)
            self._json = json_output(report)
            self._json.write(path)

        super().__init__(write, lambda path: self._json.verify(path))


def _summary_row(case: str, path: Path, report: dict) -> dict[str, Any]:
    row = {
        "case": case,
        "input": str(path),
        "status": "ok",
        "aula_normalized": report["score"],
        "aula_raw": report["aula"]["raw"]["union"],
        "decision": report["decision"],
        "reason": report["reason"],
        "threshold": report["threshold"],
        "empty_foreground": report["aula"]["empty_foreground"],
        "kept_heads": f"{report['heads']['first']}:{report['heads']['stop']}",
        "estimated_dice_text": report["estimated_dice_text"],
        "error": "",
    }
    estimate = report.get("estimated_dice") or {}
    for key in ("value", "low", "high"):
        row["estimated_dice" if key == "value" else f"estimated_dice_{key}"] = estimate.get(key)
    for name, value in report["aula"]["normalized"].items():
        if name != "union":
            row[f"aula_normalized_{name}"] = value
    return row


def _summary_csv(rows: list[dict[str, Any]], metadata) -> str:
    def order(row: dict[str, Any]) -> tuple:
        if row["status"] != "ok":
            return (2, 0.0, row["case"])
        score = row["aula_normalized"]
        if score is None or (isinstance(score, float) and math.isnan(score)):
            return (0, 0.0, row["case"])  # undefined AULA: review first
        return (1, float(score), row["case"])

    rows = sorted(rows, key=order)
    class_columns = [f"aula_normalized_{c.name}" for c in metadata.foreground_classes]
    columns = [
        "rank",
        "case",
        "aula_normalized",
        "aula_raw",
        "decision",
        "reason",
        "threshold",
        "estimated_dice",
        "estimated_dice_low",
        "estimated_dice_high",
        "estimated_dice_text",
        "empty_foreground",
        *class_columns,
        "kept_heads",
        "status",
        "error",
        "input",
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for rank, row in enumerate(rows, start=1):
        writer.writerow(
            {
                **{c: "" for c in columns},
                **{k: ("" if v is None else v) for k, v in row.items()},
                "rank": rank,
            }
        )
    return buffer.getvalue()


def _case_names(inputs: list[Path]) -> list[str | None]:
    seen: set[str] = set()
    names: list[str | None] = []
    for path in inputs:
        name = case_name(path)
        names.append(None if name in seen else name)
        seen.add(name)
    return names


def _head_range(text: str) -> tuple[int, int | None]:
    try:
        first_text, stop_text = text.split(":")
        return int(first_text or 0), (int(stop_text) if stop_text else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FIRST:STOP, e.g. 3:10 or 3:") from None


def _map_list(text: str) -> tuple[str, ...]:
    from ..inference.results import resolve_maps

    try:
        return resolve_maps([t.strip() for t in text.split(",") if t.strip()])
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _window(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three positive integers Z,Y,X")
    return values  # type: ignore[return-value]

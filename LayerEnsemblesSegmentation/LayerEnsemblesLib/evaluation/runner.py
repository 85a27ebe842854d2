"""Run every method over a labelled dataset, clean and with synthetic shifts, and record each case.

The output folder holds what the report is built from, so the report can be regenerated at any time:

- ``cases.csv``: one row per (method, case, condition) with the metrics and the image-level scores;
- ``heads.csv``: for layer ensembles, Dice and NLL as the number of skipped heads k goes from 0 to
  L − 1 (Fig. 3), from recombination of the same forward pass;
- ``cost.json``: per method, parameters, forward passes and the cost probe's time and peak memory;
- ``run.json``: the configuration (methods, dataset, shifts, thresholds, versions).

The CSV files are rewritten atomically after each case, so an interrupted run leaves valid files
and ``resume`` continues where it stopped. Under ``torchrun`` the cases are shared among the ranks
(see :mod:`.ranks`).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..contract import ModelMetadata, read_metadata
from ..errors import InputError, first_line
from ..fileio import atomic_write_json, atomic_write_text, file_sha256, read_image
from ..grids import check_same_grid
from ..members import member_index, member_metadata
from . import cost, metrics, ranks, scores, shifts
from .tables import read_csv

CASES_FILE = "cases.csv"
HEADS_FILE = "heads.csv"
COST_FILE = "cost.json"
RUN_FILE = "run.json"
CLEAN = "clean"
KEY_COLUMNS = ("method", "kind", "case", "condition", "shift", "severity")
MAPS = ("entropy", "mutual_information", "variance")
MEMBER_MARKER = "#member="


@dataclass
class Method:
    name: str
    path: Path
    metadata: ModelMetadata
    member: int | None = None  # NAME=FILE#member=K: member K of a deep ensemble with member heads

    @functools.cached_property
    def sha256(self) -> str:
        """The model file's identity, recorded in the run file so a resume cannot mix two models."""
        return file_sha256(self.path)

    @property
    def has_aula(self) -> bool:
        """AULA is a layer-ensemble score; it needs at least two kept heads (one adjacent pair)."""
        kept = self.metadata.num_heads - self.metadata.skip_heads
        return self.metadata.kind == "layer_ensemble" and kept >= 2

    @property
    def ensemble_size(self) -> int:
        """Members averaged per prediction: kept heads, deep-ensemble members or dropout samples."""
        if self.metadata.kind == "mc_dropout":
            return self.metadata.samples
        if self.metadata.kind == "deep_ensemble":
            return self.metadata.num_heads
        return self.metadata.num_heads - self.metadata.skip_heads

    @property
    def map_scores(self) -> tuple[str, ...]:
        """A single network has an entropy but no disagreement: its MI and variance are 0 by definition
        (what the maps hold is resampling round-off), so they are not recorded as scores."""
        return scores.MAP_SCORES if self.ensemble_size > 1 else ("entropy",)

    @property
    def has_head_curve(self) -> bool:
        return self.metadata.kind == "layer_ensemble" and self.metadata.num_heads >= 2 and self.has_aula


@dataclass(frozen=True)
class Condition:
    shift: str  # "none" for the clean images
    severity: int  # 0 for the clean images

    @property
    def name(self) -> str:
        return CLEAN if self.shift == "none" else f"{self.shift}-{self.severity}"


@dataclass(frozen=True)
class Case:
    case_id: str
    image: Path
    label: Path


def parse_method(text: str) -> tuple[str, Path, str | None]:
    """``NAME=MODEL.pt`` (or a bare path, named after the file), optionally ``#member=K``: member K (an
    index or a member name) of a deep ensemble whose members keep their heads, as a layer ensemble."""
    spec, marker, member = text.rpartition(MEMBER_MARKER)
    if not marker:
        spec, member = text, None
    elif not member.strip():
        raise InputError(f"--model {text}: give the member after {MEMBER_MARKER} (an index or a name)")
    name, separator, path = spec.partition("=")
    if not separator:
        name, path = Path(spec).stem, spec
    name = name.strip()
    if not name or any(c in name for c in ',\n"') or name.startswith("-"):
        raise InputError(f"--model {text}: method names may not be empty or contain commas or quotes")
    return name, Path(path), member.strip() if member is not None else None


def load_methods(specs: Sequence[str]) -> list[Method]:
    methods, seen = [], set()
    for spec in specs:
        name, path, member = parse_method(spec)
        if name in seen:
            raise InputError(f"--model {spec}: the name {name!r} is used twice")
        seen.add(name)
        metadata = read_metadata(path)
        index = None if member is None else member_index(metadata, member, str(path))
        if index is not None:
            metadata = member_metadata(metadata, index, str(path))
        methods.append(Method(name, path, metadata, index))
    if not methods:
        raise InputError("give at least one --model NAME=MODEL.pt")
    reference = methods[0].metadata
    for method in methods[1:]:
        if [(c.name, c.value) for c in method.metadata.classes] != [
            (c.name, c.value) for c in reference.classes
        ]:
            raise InputError(
                f"{method.path}: its classes differ from those of {methods[0].path}; methods "
                "compared in one evaluation must segment the same structures"
            )
    return methods


def conditions_for(shift_names: Sequence[str], severities: Sequence[int]) -> list[Condition]:
    return [Condition("none", 0)] + [Condition(s, v) for s in shift_names for v in severities]


def default_reference(methods: Sequence[Method]) -> str:
    """The layer ensemble the others are tested against: the first one that keeps several heads."""
    for method in methods:
        if method.has_aula:
            return method.name
    return methods[0].name


# ------------------------------------------------------------------------------------------ one case


def case_metrics(
    prediction: Any,
    label: np.ndarray,
    label_indices: np.ndarray,
    spacing: Sequence[float],
    foreground: dict[str, int],
    with_distances: bool = True,
) -> dict[str, float]:
    """Metrics of one prediction against the reference (arrays in z, y, x; spacing x, y, z)."""
    segmentation = sitk.GetArrayViewFromImage(prediction.segmentation)
    if with_distances:
        row = metrics.segmentation_metrics(segmentation, label, spacing, foreground)
    else:
        row = {
            f"dice_{metrics.column_name(n)}": metrics.dice(segmentation == v, label == v)
            for n, v in foreground.items()
        }
        row["dice_mean"] = float(np.mean(list(row.values())))
        row["dice_union"] = metrics.dice(
            np.isin(segmentation, list(foreground.values())), np.isin(label, list(foreground.values()))
        )
    probabilities = sitk.GetArrayViewFromImage(prediction.probabilities)
    row["nll"] = metrics.negative_log_likelihood(probabilities, label_indices)
    return row


def evaluate_prediction(
    method: Method,
    prediction: Any,
    label: np.ndarray,
    label_indices: np.ndarray,
    spacing: Sequence[float],
    foreground: dict[str, int],
    with_distances: bool = True,
) -> dict[str, Any]:
    row: dict[str, Any] = case_metrics(prediction, label, label_indices, spacing, foreground, with_distances)
    row.update(scores.image_scores(prediction, with_aula=method.has_aula, maps=method.map_scores))
    if method.has_aula:
        row["empty_foreground"] = float(bool(prediction.aula.empty_foreground))
        row["accepted"] = float(bool(prediction.accepted))
        row["aula_threshold"] = float(prediction.threshold)
    row["forward_s"] = float(prediction.timings.get("forward", math.nan))
    return row


def head_curve(
    method: Method,
    prediction: Any,
    label: np.ndarray,
    label_indices: np.ndarray,
    spacing: Sequence[float],
    foreground: dict[str, int],
) -> list[dict[str, Any]]:
    """Dice and NLL for k = 0 .. L − 1 skipped heads, recombined from the same pass (Fig. 3)."""
    rows = []
    for skip in range(method.metadata.num_heads):
        recombined = prediction.recombine(skip_heads=skip, maps=())
        values = case_metrics(recombined, label, label_indices, spacing, foreground, with_distances=False)
        rows.append({"skip_heads": skip, "kept_heads": method.metadata.num_heads - skip, **values})
    return rows


def exploration_columns(prediction: Any, foreground: dict[str, int]) -> dict[str, float]:
    """Features for choosing a better decision score: the agreement curve over all heads (``pair_*``),
    the predicted volumes and the maps' means over the predicted foreground."""
    everything = prediction.recombine(skip_heads=0, maps=())
    row = scores.pair_columns(everything.aula)
    row.update(scores.volume_columns(prediction.segmentation, foreground))
    row.update(scores.foreground_map_means(prediction.maps, prediction.segmentation))
    return row


# ------------------------------------------------------------------------------------------ files


def write_csv(path: Path, rows: Sequence[dict[str, Any]], leading: Sequence[str]) -> None:
    """All rows, leading columns first and the rest sorted, written to a temporary file and renamed."""
    columns = list(leading) + sorted({k for row in rows for k in row} - set(leading))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue(), overwrite=True)


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(round(value, 8))
    return value


# ------------------------------------------------------------------------------------------ the run


@dataclass
class EvaluationSettings:
    shifts: list[str]
    severities: list[int]
    seed: int = 0
    dice_threshold: float = 0.8
    qc_metric: str = "dice_mean"
    reference: str | None = None
    device: str = "auto"
    head_curve: bool = True
    cost_probe: bool = True
    pair_curves: bool = False  # record pair_*, volume_* and *_fgmean columns for score exploration


def run_evaluation(
    methods: Sequence[Method],
    cases: Sequence[Case],
    settings: EvaluationSettings,
    out: str | Path,
    dataset: str = "",
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    rank_run: Any = None,
) -> Path:
    """Evaluate ``methods`` on ``cases`` under every condition; write the files described above.

    ``rank_run`` (a :class:`~LayerEnsemblesLib.commands.sharding.RankRun`) shares the cases among
    the ranks of a distributed run; rank 0 then writes the merged files.
    """
    out = Path(out)
    cases_path, heads_path = out / CASES_FILE, out / HEADS_FILE
    if (cases_path.exists() or ranks.part_files(out, "cases")) and not (overwrite or resume):
        raise InputError(
            f"{out}: already holds an evaluation ({CASES_FILE}); use --resume to continue it, "
            "--overwrite to replace it, or --report-only to rebuild its report"
        )
    if not cases:
        raise InputError(f"{dataset or out}: no cases to evaluate")
    if resume and cases_path.exists():
        check_resume_models(out / RUN_FILE, methods)
    rows = read_csv(cases_path) if resume and cases_path.exists() else []
    head_rows = read_csv(heads_path) if resume and heads_path.exists() else []
    if resume:  # rows that ranks of an interrupted distributed run finished
        rows = _unique(rows + [r for path in ranks.part_files(out, "cases") for r in read_csv(path)])
        head_rows = _unique(
            head_rows + [r for path in ranks.part_files(out, "heads") for r in read_csv(path)]
        )
    rows = [r for r in rows if not is_failed_row(r)]  # a failed case is tried again on resume
    done = {(r["method"], r["case"], r["condition"]) for r in rows}
    # a head curve belongs to a finished row; any other was written by a run cut short: redo it
    head_rows = [r for r in head_rows if (r["method"], r["case"], r["condition"]) in done]
    conditions = conditions_for(settings.shifts, settings.severities)
    reference = settings.reference or default_reference(methods)
    if reference not in [m.name for m in methods]:
        raise InputError(f"--reference {reference}: not among the methods {[m.name for m in methods]}")
    classes = methods[0].metadata.classes
    out.mkdir(parents=True, exist_ok=True)
    rank = 0 if rank_run is None else rank_run.rank
    distributed = rank_run is not None and rank_run.distributed
    if rank == 0:
        atomic_write_json(
            out / RUN_FILE,
            {
                "methods": [
                    {
                        "name": m.name,
                        "path": str(m.path),
                        "member": m.member,
                        "sha256": m.sha256,
                        "kind": m.metadata.kind,
                        "model_name": m.metadata.name,
                        "heads": m.metadata.num_heads,
                        "skip_heads": m.metadata.skip_heads,
                        "decision_score": m.metadata.decision_score,
                    }
                    for m in methods
                ],
                "reference": reference,
                "dataset": dataset,
                "cases": [c.case_id for c in cases],
                "classes": [{"name": c.name, "value": c.value} for c in classes],
                "conditions": [c.name for c in conditions],
                "shifts": settings.shifts,
                "severities": settings.severities,
                "seed": settings.seed,
                "dice_threshold": settings.dice_threshold,
                "qc_metric": settings.qc_metric,
                "device": settings.device,
                "library_version": __version__,
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
            overwrite=True,
        )
    mine = [cases[i] for i in rank_run.split([c.image for c in cases])] if distributed else list(cases)
    # one process rewrites the tables as it goes; each rank of a distributed run its own parts
    if distributed:
        tables = ranks.part_path(out, "cases", rank), ranks.part_path(out, "heads", rank)
        written, written_heads = [], []
    else:
        tables, written, written_heads = (cases_path, heads_path), rows, head_rows
    bar = _progress(len(mine) * len(conditions), progress and rank == 0)
    try:
        cases_done = evaluate_cases(methods, mine, conditions, settings, done, bar)
        for count, (case_rows, case_head_rows) in enumerate(cases_done, start=1):
            written.extend(case_rows)
            written_heads.extend(case_head_rows)
            for row in filter(is_failed_row, case_rows):
                log(f"error: {row['case']} ({row['method']}, {row['condition']}): {row['error']}")
            write_csv(tables[0], written, KEY_COLUMNS)
            if written_heads:
                write_csv(tables[1], written_heads, KEY_COLUMNS + ("skip_heads", "kept_heads"))
            if rank_run is not None:
                rank_run.after_case(count)  # the tests' fault point, once the case is on disk
    finally:
        if bar is not None:
            bar.close()
    if distributed:
        order = [c.case_id for c in cases]
        rows += ranks.in_case_order(rank_run.gather(written), order)
        head_rows += ranks.in_case_order(rank_run.gather(written_heads), order)
        if rank == 0:
            write_csv(cases_path, rows, KEY_COLUMNS)
            if head_rows:
                write_csv(heads_path, head_rows, KEY_COLUMNS + ("skip_heads", "kept_heads"))
    if rank == 0:
        ranks.remove_parts(out)  # their rows are in the tables now
        write_cost(methods, cases[0], settings, out, log)
    return out


def check_resume_models(run_file: Path, methods: Sequence[Method]) -> None:
    """Refuse to resume with a model file other than the one that wrote the method's rows.

    The rows are keyed by method name; another model under the same name would mix two models'
    results in one report. The run file records each model's SHA-256.
    """
    try:
        documents = json.loads(run_file.read_text("utf-8"))["methods"]
        recorded = {m["name"]: m.get("sha256") for m in documents}
        members = {m["name"]: m.get("member") for m in documents}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(
            f"{run_file}: unreadable or damaged ({type(error).__name__}); cannot check which models wrote "
            "the rows to resume: use --overwrite to start again"
        ) from None
    for method in methods:
        if method.name not in recorded:
            continue  # a method new to this run: nothing of it to mix
        if recorded[method.name] is None:
            raise InputError(
                f"{run_file}: records no checksum for method {method.name!r} (written by an older version); "
                "cannot check that --resume uses the same model: use --overwrite"
            )
        if recorded[method.name] != method.sha256:
            raise InputError(
                f"{method.path}: differs from the model that wrote the rows of method {method.name!r} "
                f"(SHA-256 {method.sha256[:12]}... vs {recorded[method.name][:12]}...); resume with that "
                "model, give this one another name, or use --overwrite"
            )
        if members[method.name] != method.member:
            raise InputError(
                f"{method.path}: method {method.name!r} was run as member {members[method.name]}, now as "
                f"member {method.member}; resume with the same #member, give it another name, or use "
                "--overwrite"
            )


def is_failed_row(row: dict[str, Any]) -> bool:
    error = row.get("error")
    return isinstance(error, str) and error != ""


def unfinished_cases(
    out: str | Path, methods: Sequence[Method], cases: Sequence[Case], settings
) -> list[str]:
    """Cases with a (method, condition) row in neither the table nor a rank's part: what a rerun does."""
    out = Path(out)
    found = [*([out / CASES_FILE] if (out / CASES_FILE).is_file() else []), *ranks.part_files(out, "cases")]
    done = {(r["method"], r["case"], r["condition"]) for path in found for r in read_csv(path)}
    conditions = conditions_for(settings.shifts, settings.severities)
    return [
        case.case_id
        for case in cases
        if any((m.name, case.case_id, c.name) not in done for m in methods for c in conditions)
    ]


def _unique(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without repeats of the same key (a part file may repeat rows already in the table)."""
    seen, unique = set(), []
    for row in rows:
        key = tuple(str(row.get(k)) for k in (*KEY_COLUMNS, "skip_heads"))
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


def evaluate_cases(
    methods: Sequence[Method],
    cases: Sequence[Case],
    conditions: Sequence[Condition],
    settings: EvaluationSettings,
    done: set[tuple[str, str, str]] = frozenset(),
    bar: Any = None,
    with_distances: bool = True,
) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Per case, the rows of every (method, condition) not in ``done``, and the head-curve rows."""
    from ..inference import Predictor
    from ..inference.prefetch import prefetched

    classes = methods[0].metadata.classes
    foreground = {c.name: c.value for c in classes if c.value != 0}
    class_values = [c.value for c in classes]
    predictors = {m.name: Predictor(m.path, device=settings.device, member=m.member) for m in methods}
    # the next case's files are read while this one computes
    pairs = prefetched(
        cases, lambda c: (read_image(c.image), read_image(c.label)), 1 if len(cases) > 1 else 0
    )
    for case, load in pairs:
        try:
            image, label_image = load()
            check_same_grid(image, label_image, str(case.label), what="label")
            label = sitk.GetArrayFromImage(label_image).astype(np.int64)
            label_indices = metrics.labels_to_indices(label, class_values, str(case.label))
        except Exception as error:  # noqa: BLE001 - a broken case is a row, the others still run
            failure = _failure_text(error)
            rows = [
                _failed_row(method, case, condition, failure)
                for condition in conditions
                for method in methods
                if (method.name, case.case_id, condition.name) not in done
            ]
            if bar is not None:
                bar.update(len(conditions))
            yield rows, []
            continue
        spacing = image.GetSpacing()
        rows: list[dict[str, Any]] = []
        head_rows: list[dict[str, Any]] = []
        for condition in conditions:
            pending = [m for m in methods if (m.name, case.case_id, condition.name) not in done]
            shifted = None
            for method in pending:
                try:
                    shifted = shifted or _shifted(image, condition, settings, case)
                    start = time.perf_counter()
                    prediction = predictors[method.name].predict(shifted, maps=MAPS, source=str(case.image))
                    seconds = time.perf_counter() - start
                    values = evaluate_prediction(
                        method, prediction, label, label_indices, spacing, foreground, with_distances
                    )
                    if settings.pair_curves and method.has_aula:
                        values.update(exploration_columns(prediction, foreground))
                    curve = (
                        head_curve(method, prediction, label, label_indices, spacing, foreground)
                        if settings.head_curve and method.has_head_curve
                        else []
                    )
                except Exception as error:  # noqa: BLE001 - one failure is a row, not an abort
                    rows.append(_failed_row(method, case, condition, _failure_text(error)))
                    continue
                key = _row_key(method, case, condition)
                rows.append({**key, **values, "time_s": seconds, "device": prediction.device, "error": ""})
                head_rows.extend({**key, **curve_row} for curve_row in curve)
            if bar is not None:
                bar.update(1)
        yield rows, head_rows


def _shifted(image: sitk.Image, condition: Condition, settings: EvaluationSettings, case: Case) -> sitk.Image:
    if condition.shift == "none":
        return image
    return shifts.apply_shift(image, condition.shift, condition.severity, settings.seed, case.case_id)


def _row_key(method: Method, case: Case, condition: Condition) -> dict[str, Any]:
    return {
        "method": method.name,
        "kind": method.metadata.kind,
        "case": case.case_id,
        "condition": condition.name,
        "shift": condition.shift,
        "severity": condition.severity,
    }


def _failed_row(method: Method, case: Case, condition: Condition, error: str) -> dict[str, Any]:
    """A case that could not be evaluated: its key and the reason, no metric (NaN in every statistic)."""
    return {**_row_key(method, case, condition), "error": error}


def _failure_text(error: BaseException) -> str:
    if isinstance(error, InputError):
        return first_line(error, 300)
    return f"{type(error).__name__}: {first_line(error, 300)}"


def write_cost(
    methods: Sequence[Method], case: Case, settings: EvaluationSettings, out: Path, log: Callable[[str], None]
) -> None:
    document = {}
    for method in methods:
        entry: dict[str, Any] = {
            "kind": method.metadata.kind,
            "parameters": cost.parameter_count(method.path, method.member),
            "forward_passes": cost.forward_passes(method.metadata),
            "heads": method.metadata.num_heads,
        }
        if settings.cost_probe:
            log(f"measuring the cost of {method.name} on {case.case_id} in a fresh process")
            measured = cost.probe(method.path, case.image, settings.device, member=method.member)
            entry["probe"] = {**measured, "case": case.case_id}
        document[method.name] = entry
    atomic_write_json(out / COST_FILE, document, overwrite=True)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="evaluating", unit="case-condition")

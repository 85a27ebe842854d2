"""Ratios, targets and the Markdown tables of a benchmark run.

Ratios are always taken within one run (same machine, same inputs, same load), because absolute
numbers on a shared CPU drift between runs while ratios mostly do not.
"""

from __future__ import annotations

from typing import Any

TARGET_SIZE = "160x192x160"
RECOMBINE_SIZE = "256x256x160"
RECOMBINE_KEYS = ("segmentation_step", "agreement_step", "heads_step", "heads_jump", "threshold")


def _ok(records: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for record in records:
        if record.get("status") == "ok" and all(record.get(k) == v for k, v in match.items()):
            return record
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def _sizes(records: list[dict[str, Any]], section: str) -> list[str]:
    seen: list[str] = []
    for record in records:
        if record["section"] == section and record["size"] not in seen:
            seen.append(record["size"])
    return seen


def method_ratios(records: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per size: LE/plain, LE/plain (same archive), DE5/LE, MCD10/LE in time, LE/plain in peak memory."""
    result: dict[str, dict[str, float | None]] = {}
    for size in _sizes(records, "methods"):
        found = {
            m: _ok(records, section="methods", size=size, method=m)
            for m in ("plain", "plain_same", "le", "le_agreement", "de5", "mcd10")
        }
        time = {m: r["median_s"] if r else None for m, r in found.items()}
        memory = {m: r.get("peak_mb") if r else None for m, r in found.items()}
        result[size] = {
            "le_over_plain": _ratio(time["le"], time["plain"]),
            "le_over_plain_same": _ratio(time["le"], time["plain_same"]),
            "le_agreement_over_plain": _ratio(time["le_agreement"], time["plain"]),
            "plain_same_over_plain": _ratio(time["plain_same"], time["plain"]),
            "de5_over_le": _ratio(time["de5"], time["le"]),
            "mcd10_over_le": _ratio(time["mcd10"], time["le"]),
            "le_over_plain_memory": _ratio(memory["le"], memory["plain"]),
            "de5_over_le_memory": _ratio(memory["de5"], memory["le"]),
        }
    return result


def targets(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, judged on this run: one row per target and size where it was measured."""
    records = document["measurements"]
    cuda = str(document["meta"]["device"].get("device", "")).startswith("cuda")
    ratios = method_ratios(records)
    rows: list[dict[str, Any]] = []

    def add(
        name: str, size: str, value: float | None, limit: float, higher_is_better: bool, unit: str = "x"
    ) -> None:
        if value is None:
            rows.append(
                {"target": name, "size": size, "value": None, "met": None, "limit": limit, "unit": unit}
            )
            return
        met = value >= limit if higher_is_better else value <= limit
        rows.append({"target": name, "size": size, "value": value, "met": met, "limit": limit, "unit": unit})

    le_limit = 1.05 if cuda else 1.15
    sizes = list(ratios) or [TARGET_SIZE]
    for size in sizes:
        add(
            f"LE / plain time <= {le_limit}", size, ratios.get(size, {}).get("le_over_plain"), le_limit, False
        )
    for size in sizes:
        add("DE5 / LE time >= 4.7", size, ratios.get(size, {}).get("de5_over_le"), 4.7, True)
    for size in sizes:
        add("MCD10 / LE time >= 9.5", size, ratios.get(size, {}).get("mcd10_over_le"), 9.5, True)
    memory_name = "LE / plain peak GPU memory <= 1.2" if cuda else "LE / plain peak RSS <= 1.2 (GPU target)"
    for size in sizes:
        add(memory_name, size, ratios.get(size, {}).get("le_over_plain_memory"), 1.2, False)
    recombine_limit = 0.05 if cuda else 0.5
    variants = (
        ("heads_step", "4 maps"),
        ("agreement_step", "agreement map only"),
        ("segmentation_step", "no map"),
    )
    for key, what in variants:
        for size in _sizes(records, "recombine") or [RECOMBINE_SIZE]:
            record = _ok(records, section="recombine", size=size)
            value = record[key]["median_s"] if record and record.get(key) else None
            name = f"recombination, heads moved by one, {what} <= {recombine_limit} s"
            add(name, size, value, recombine_limit, False, "s")
    return rows


def sanity(records: list[dict[str, Any]]) -> dict[str, bool]:
    """Per size: do ``plain`` and ``plain_same`` give the identical segmentation (same weights, same head)?"""
    result = {}
    for size in _sizes(records, "methods"):
        plain = _ok(records, section="methods", size=size, method="plain")
        same = _ok(records, section="methods", size=size, method="plain_same")
        if plain and same and plain.get("segmentation_digest"):
            result[size] = plain["segmentation_digest"] == same.get("segmentation_digest")
    return result


def summarize_document(document: dict[str, Any]) -> dict[str, Any]:
    records = document["measurements"]
    return {
        "ratios": method_ratios(records),
        "targets": targets(document),
        "plain_equals_plain_same": sanity(records),
    }


# ---------------------------------------------------------------------------------------- Markdown
def _s(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def _ms_or_s(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def _label(records: list[dict[str, Any]], size: str) -> str:
    for record in records:
        if record["size"] == size:
            return record.get("size_label", size)
    return size


METHOD_NAMES = {
    "plain": "plain (final head only)",
    "plain_same": "plain, LE archive (all heads run, final reduced)",
    "le": "**Layer Ensemble** (all heads, seg + 4 maps + AULA)",
    "le_agreement": "Layer Ensemble, agreement map only (CLI default)",
    "de5": "Deep Ensemble M=5",
    "mcd10": "MC dropout T=10",
}


METHOD_ORDER = ("plain", "plain_same", "le", "le_agreement", "de5", "mcd10", "recombine", "cli")


def ordered(records: list[dict[str, Any]], sizes: list[str]) -> list[dict[str, Any]]:
    """Records by size (the run's order), then method; measurement order follows priority, not this."""

    def key(record: dict[str, Any]) -> tuple:
        size = sizes.index(record["size"]) if record["size"] in sizes else len(sizes)
        method = METHOD_ORDER.index(record["method"]) if record["method"] in METHOD_ORDER else 99
        return (size, record.get("network", ""), method)

    return sorted(records, key=key)


def render_markdown(document: dict[str, Any]) -> str:
    meta = document["meta"]
    records = ordered(document["measurements"], meta.get("sizes", []))
    summary = document.get("summary") or summarize_document(document)
    device = meta["device"]
    lines = [f"# Benchmark: {device.get('device_name', device.get('device'))} ({device.get('device')})", ""]
    lines += [
        f"- Command: `{meta['command']}`",
        f"- Date {meta['date']}, commit {meta.get('git_commit')}, torch {meta['torch']}, "
        f"Python {meta['python']}, {meta['threads']} torch thread(s) on {meta['cpu_count']} CPU(s) "
        f"({meta['cpu']}); load average {_load(meta.get('load_average_start'))} at the start, "
        f"{_load(meta.get('load_average_end'))} at the end (a shared machine: absolute CPU times drift with "
        "the load, ratios within the run less so).",
        f"- Network: {meta['network']}. Recombination network: {meta['recombine_network']}.",
        f"- {meta['warmup']} warm-up call(s), then {meta['repeats']} timed repeat(s) (fewer where the budget "
        f"says so; see `runs`); CLI: {meta['cli_repeats']} run(s), each a fresh process. "
        f"Timing: {meta['timing']}. Memory: {meta['memory']}.",
        f"- Hippocampus input: {meta['hippocampus_case']}.",
        f"- Elapsed: {meta.get('elapsed_s')} s.",
    ]
    if meta.get("cudnn") is not None:
        lines.append(
            f"- cuDNN {meta['cudnn']}, cudnn.allow_tf32={meta.get('cudnn_allow_tf32')}, "
            f"cudnn.benchmark={meta.get('cudnn_benchmark')} (torch defaults)."
        )
    lines.append("")

    lines += ["## Targets", ""]
    rows = []
    for row in summary["targets"]:
        met = "not measured" if row["met"] is None else ("**met**" if row["met"] else "**not met**")
        value = (
            "–"
            if row["value"] is None
            else (f"{row['value']:.3f} s" if row["unit"] == "s" else f"{row['value']:.3f}x")
        )
        rows.append([row["target"], _label(records, row["size"]), value, met])
    lines += _table(["target", "size", "this run", "verdict"], rows)

    lines += [
        "## Methods, per size",
        "",
        "Each row is one `Predictor.predict` on the same input with the same window; `peak MB` is the "
        "memory above what the process held before its first call.",
        "",
    ]
    rows = []
    for record in records:
        if record["section"] != "methods":
            continue
        name = METHOD_NAMES.get(record["method"], record["method"])
        if record["status"] != "ok":
            rows.append(
                [
                    record.get("size_label", record["size"]),
                    name,
                    record["status"],
                    "–",
                    "–",
                    "–",
                    "–",
                    "–",
                    "–",
                    "–",
                    record.get("reason", ""),
                ]
            )
            continue
        breakdown = record.get("breakdown_median_s", {})
        rows.append(
            [
                record.get("size_label", record["size"]),
                name,
                str(record["repeats"]),
                _ms_or_s(record["median_s"]),
                _ms_or_s(record["min_s"]),
                _ms_or_s(record["max_s"]),
                _s(record.get("peak_mb"), 1),
                _ms_or_s(breakdown.get("forward")),
                _ms_or_s(breakdown.get("reduce")),
                _ms_or_s(breakdown.get("postprocess")),
                f"{record.get('windows')} window(s); {record.get('note', '')}",
            ]
        )
    lines += _table(
        [
            "size",
            "method",
            "runs",
            "median",
            "min",
            "max",
            "peak MB",
            "forward",
            "reduce",
            "postprocess",
            "notes",
        ],
        rows,
    )

    lines += ["## Ratios (within this run)", ""]
    rows = []
    for size, ratio in sorted(summary["ratios"].items(), key=lambda item: _position(records, item[0])):
        rows.append(
            [
                _label(records, size),
                _s(ratio["le_over_plain"]),
                _s(ratio["le_over_plain_same"]),
                _s(ratio["plain_same_over_plain"]),
                _s(ratio.get("le_agreement_over_plain")),
                _s(ratio["de5_over_le"]),
                _s(ratio["mcd10_over_le"]),
                _s(ratio["le_over_plain_memory"]),
                _s(ratio["de5_over_le_memory"]),
            ]
        )
    lines += _table(
        [
            "size",
            "LE / plain",
            "LE / plain (same archive)",
            "plain (same archive) / plain",
            "LE agreement-only / plain",
            "DE5 / LE",
            "MCD10 / LE",
            "LE / plain memory",
            "DE5 / LE memory",
        ],
        rows,
    )
    checks = summary.get("plain_equals_plain_same", {})
    if checks:
        lines += [
            "Check: the plain network and the LE archive restricted to its final head give the identical "
            "segmentation: "
            + ", ".join(f"{_label(records, k)} {'yes' if v else '**no**'}" for k, v in checks.items())
            + ".",
            "",
        ]

    lines += [
        "## Recombination (no new forward pass)",
        "",
        "A slider step moves the kept range by one head (skip 1, 2, 1, ...): `segmentation` recomputes the "
        "segmentation and AULA, `+ agreement` also the agreement map, `+ 4 maps` all four maps; `jump`: half "
        "the heads leave or enter (4 maps); `threshold`: only the decision changes. Each includes mapping "
        "the volumes back to the input grid. Median (n).",
        "",
    ]
    rows = []
    for record in records:
        if record["section"] != "recombine":
            continue
        if record["status"] != "ok":
            rows.append(
                [
                    record.get("size_label", record["size"]),
                    record["status"],
                    *["–"] * 6,
                    record.get("reason", ""),
                ]
            )
            continue
        cells = []
        for key in RECOMBINE_KEYS:
            part = record.get(key)
            cells.append("–" if not part else f"{_ms_or_s(part['median_s'])} (n={part['repeats']})")
        rows.append(
            [
                record.get("size_label", record["size"]),
                f"{record['heads']} heads",
                *cells,
                _s(record.get("peak_mb"), 1),
                f"{record['network']}; first prediction {_ms_or_s(record.get('first_prediction_s'))}; "
                f"{record.get('note', '')}",
            ]
        )
    header = ["size", "heads", "segmentation", "+ agreement", "+ 4 maps", "jump (4 maps)", "threshold"]
    lines += _table([*header, "peak MB", "notes"], rows)

    lines += ["## End-to-end CLI (`layer-ensembles segment`, one process per run)", ""]
    rows = []
    for record in records:
        if record["section"] != "cli":
            continue
        if record["status"] != "ok":
            rows.append(
                [
                    record.get("size_label", record["size"]),
                    record["status"],
                    "–",
                    "–",
                    "–",
                    "–",
                    record.get("reason", ""),
                ]
            )
            continue
        stages = record.get("stages_median_s", {})
        stage_text = ", ".join(
            f"{k} {_ms_or_s(stages[k])}"
            for k in ("read", "preprocess", "forward", "reduce", "postprocess", "write")
            if k in stages
        )
        rows.append(
            [
                record.get("size_label", record["size"]),
                str(record["repeats"]),
                _ms_or_s(record["median_s"]),
                f"{_ms_or_s(record['min_s'])}–{_ms_or_s(record['max_s'])}",
                _s(record.get("peak_rss_mb"), 1),
                stage_text,
                record.get("note", ""),
            ]
        )
    lines += _table(
        [
            "size",
            "runs",
            "median (whole process)",
            "min–max",
            "peak RSS MB (process)",
            "stages inside (median)",
            "notes",
        ],
        rows,
    )

    lines += ["## Scaling with volume size", ""]
    rows = []
    for size in _sizes(records, "methods"):
        plain = _ok(records, section="methods", size=size, method="plain")
        le = _ok(records, section="methods", size=size, method="le")
        if not plain and not le:
            continue
        voxels = (le or plain)["voxels"] / 1e6
        rows.append(
            [
                _label(records, size),
                f"{voxels:.2f}",
                str((le or plain).get("windows")),
                _ms_or_s(plain["median_s"]) if plain else "–",
                _ms_or_s(le["median_s"]) if le else "–",
                _s(le["median_s"] / voxels) if le else "–",
                _s(plain.get("peak_mb"), 1) if plain else "–",
                _s(le.get("peak_mb"), 1) if le else "–",
                _s(le["peak_mb"] / voxels, 1) if le else "–",
            ]
        )
    lines += _table(
        [
            "size",
            "Mvoxels",
            "windows",
            "plain",
            "LE",
            "LE s / Mvoxel",
            "plain peak MB",
            "LE peak MB",
            "LE MB / Mvoxel",
        ],
        rows,
    )

    lines += ["## Scaling with the number of heads (U-Net depth)", ""]
    rows = []
    seen = []
    for record in records:
        if record["section"] == "heads" and record["network"] not in seen:
            seen.append(record["network"])
    for network in seen:
        plain = _ok(records, section="heads", network=network, method="plain")
        le = _ok(records, section="heads", network=network, method="le")
        size = next(r for r in records if r["section"] == "heads" and r["network"] == network)
        depth = int(network.split("depth")[1].split("_")[0])
        rows.append(
            [
                size.get("size_label", size["size"]),
                str(depth),
                str(2 * depth),
                _ms_or_s(plain["median_s"]) if plain else "–",
                _ms_or_s(le["median_s"]) if le else "–",
                _s(_ratio(le and le["median_s"], plain and plain["median_s"])),
                _s(plain.get("peak_mb"), 1) if plain else "–",
                _s(le.get("peak_mb"), 1) if le else "–",
                _s(_ratio(le and le.get("peak_mb"), plain and plain.get("peak_mb"))),
            ]
        )
    lines += _table(
        [
            "size",
            "depth",
            "heads",
            "plain",
            "LE",
            "LE / plain",
            "plain peak MB",
            "LE peak MB",
            "LE / plain memory",
        ],
        rows,
    )

    skipped = [r for r in records if r["status"] != "ok"]
    if skipped:
        lines += ["## Skipped or failed", ""]
        lines += [
            f"- {r.get('size_label', r['size'])}, {r['method']} ({r['section']}): {r['status']}: "
            f"{r.get('reason', '')}"
            for r in skipped
        ]
        lines.append("")
    return "\n".join(lines)


def _position(records: list[dict[str, Any]], size: str) -> int:
    return next((i for i, r in enumerate(records) if r["size"] == size), len(records))


def _load(values: list[float] | None) -> str:
    return "–" if not values else f"{values[0]:.2f}"

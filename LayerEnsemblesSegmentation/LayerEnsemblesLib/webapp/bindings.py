"""The review controller's state as the page's trame state variables: a pure function of that state.

Nothing here keeps review state: the controller owns it, ``page_state`` only formats it (rows sorted most
doubtful first, the badge, the controls' values), and is tested without a browser or a server.
"""

from __future__ import annotations

import math
from typing import Any

from ..review.queue_view import queue_rows
from ..scene.heatmaps import HEATMAP_KINDS, HEATMAP_LABELS

__all__ = ["page_state", "queue_rows", "worklist_rows"]

DECISION_TEXT = {"accepted": "accepted (model)", "flagged": "flagged (model)"}
REVIEWER_TEXT = {
    "accepted": "accepted by reviewer",
    "flagged": "flagged by reviewer",
    "corrected": "corrected",
}


def _score_text(score: float | None) -> str:
    return "—" if score is None or (isinstance(score, float) and math.isnan(score)) else f"{score:.3f}"


ESTIMATE_PREFIX = "estimated Dice "


def estimate_cell(case) -> str:
    """The worklist's short form: "0.84 (0.78–0.88)", or "—" (the row's title says why there is none)."""
    text = case.estimated_dice_text or ""
    return text[len(ESTIMATE_PREFIX) :] if case.estimated_dice is not None else "—"


def decision_text(case) -> str:
    if getattr(case, "error", ""):
        return "failed"
    if case.reviewer_decision:
        return REVIEWER_TEXT.get(case.reviewer_decision, case.reviewer_decision)
    if case.model_decision:
        return DECISION_TEXT.get(case.model_decision, case.model_decision)
    return case.status


def worklist_rows(state) -> list[dict[str, Any]]:
    """One row per case, lowest normalised AULA first; cases without a score (queued, failed) last."""
    rows = []
    for index, case in enumerate(state.cases):
        rows.append(
            {
                "index": index,
                "name": case.name,
                "score": case.score,
                "score_text": _score_text(case.score),
                "quality_text": estimate_cell(case),
                "quality_title": case.estimated_dice_text,
                "decision": (case.reviewer_decision or case.model_decision or case.status)
                if not case.error
                else "failed",
                "decision_text": decision_text(case),
                "current": index == state.current,
            }
        )
    rows.sort(
        key=lambda row: (row["score"] is None, row["score"] if row["score"] is not None else 0.0, row["name"])
    )
    return rows


def page_state(state) -> dict[str, Any]:
    """Every ``le_*`` variable the page shows, from the controller's ReviewState."""
    case = state.current_case
    model = state.model
    head_count = model.head_count if model is not None else 1
    heads = list(state.kept_heads or (model.default_heads if model is not None else (1, 1)))
    threshold = state.threshold if state.threshold is not None else (model.threshold if model else 0.9)
    if case is not None and case.score is not None:
        estimate = f" · {case.estimated_dice_text}" if case.estimated_dice_text else ""
        badge = f"{case.name}: AULA {case.score:.3f}{estimate} · {decision_text(case)}"
        badge_decision = case.reviewer_decision or case.model_decision
    elif case is not None:
        badge, badge_decision = f"{case.name}: {decision_text(case)}", ""
    else:
        badge, badge_decision = "no case shown", ""
    region = (
        f"uncertain region {state.region_index + 1} of {state.region_count}"
        if state.region_index >= 0 and state.region_count
        else f"{state.region_count} uncertain regions"
        if case is not None
        else ""
    )
    return {
        "le_rows": worklist_rows(state),
        "le_queue": queue_rows(state),
        "le_current": state.current,
        "le_has_result": case is not None and case.segmentation_id is not None,
        "le_badge_text": badge,
        "le_badge_decision": badge_decision,
        "le_threshold": round(float(threshold), 3),
        "le_threshold_text": f"{float(threshold):.3f}",
        "le_heads": heads,
        "le_heads_shown": list(case.kept_heads) if case is not None and case.kept_heads else [],
        "le_head_count": head_count,
        "le_heatmap": state.heatmap_kind,
        "le_heatmap_kinds": [
            {"title": HEATMAP_LABELS.get(kind, kind), "value": kind} for kind in HEATMAP_KINDS
        ],
        "le_opacity": round(float(state.heatmap_opacity), 2),
        "le_region_text": region,
        "le_error": state.last_error,
        "le_editing": state.correcting,
        "le_status": state.status,
        "le_running": state.run.running,
        "le_progress": round(100.0 * state.run.progress, 1),
    }

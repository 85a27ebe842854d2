"""The running batch's waiting cases as rows both GUIs show: the web app's worklist and the Slicer panel.

Kept below the GUIs so that the two show the same words for the same state, and so that it is tested
without either.
"""

from __future__ import annotations

from typing import Any

QUEUE_TEXT = {"queued": "queued", "running": "segmenting", "failed": "failed"}


def queue_rows(state) -> list[dict[str, Any]]:
    """The running batch's cases without a result yet, in run order: queued, segmenting (with its share
    done, from the child's progress events) or failed. Empty when no run goes on."""
    if not state.run.running:
        return []
    rows = []
    for queued in state.run.cases:
        status = QUEUE_TEXT.get(queued.status, queued.status)
        text = f"{status} {100.0 * queued.fraction:.0f}%" if queued.status == "running" else status
        rows.append(
            {
                "name": queued.name,
                "status": status,
                "status_text": text,
                "progress": round(100.0 * queued.fraction, 1),
                "message": queued.message,
            }
        )
    return rows


def queue_text(state) -> str:
    """One line per waiting case ("case_003: segmenting 40%"), for a plain label."""
    return "\n".join(f"{row['name']}: {row['status_text']}" for row in queue_rows(state))

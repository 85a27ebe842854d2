"""A reviewed case as the scene stores it: reviewer decision, bundle reference, settings; and back again.

Everything a reviewer decides, and where the head outputs of a result live (its results bundle), is a
node attribute or a segment tag, because those are saved with the scene. A reopened scene therefore
gives back its cases, their decisions, and, through the bundle, recombination with other heads or
another threshold without running the network again.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from ..scene import SceneContext
from ..scene.decision import FLAGGED, PREFIX, SegmentsLogic, read_decision
from ..scene.results import CHART_ROLE, HEATMAP_ROLE_PREFIX, TABLE_ROLE, CaseResult
from ..scene.segmentation import INPUT_REFERENCE_ROLE, ROLE_ATTRIBUTE
from .state import (
    DONE,
    RESTORED,
    SOURCE_ACCEPTED,
    SOURCE_CORRECTED,
    SOURCE_FLAGGED,
    SOURCE_MODEL,
    CaseState,
)

BUNDLE_ATTRIBUTE = PREFIX + "Bundle"
MODEL_PATH_ATTRIBUTE = PREFIX + "ModelPath"
CROP_ATTRIBUTE = PREFIX + "CropIndex"
REVIEWER_ATTRIBUTE = PREFIX + "ReviewerDecision"
SOURCE_ATTRIBUTE = PREFIX + "DecisionSource"
STATUS_BY_REVIEW = {
    "accepted": SegmentsLogic.Completed,
    "flagged": SegmentsLogic.Flagged,
    "corrected": SegmentsLogic.Completed,
}
SOURCE_BY_REVIEW = {"accepted": SOURCE_ACCEPTED, "flagged": SOURCE_FLAGGED, "corrected": SOURCE_CORRECTED}


def heads_from_attribute(text: str) -> tuple[int, int] | None:
    """``KeptHeads`` is stored 0-based half-open ("first:stop"); the GUI shows 1-based inclusive."""
    try:
        first, stop = (int(part) for part in text.split(":"))
    except (AttributeError, ValueError):
        return None
    return first + 1, stop


def head_range(kept_heads: tuple[int, int]) -> tuple[int, int]:
    """1-based inclusive (panel) -> the engine's 0-based half-open ``head_range``."""
    return int(kept_heads[0]) - 1, int(kept_heads[1])


def store_run_references(segmentation, bundle_path: str, model_path: str, crop_index) -> None:
    """What recombination after a reopen needs that the decision attributes do not hold."""
    segmentation.SetAttribute(BUNDLE_ATTRIBUTE, str(bundle_path))
    segmentation.SetAttribute(MODEL_PATH_ATTRIBUTE, str(model_path))
    segmentation.SetAttribute(CROP_ATTRIBUTE, ",".join(str(int(v)) for v in crop_index) if crop_index else "")


def crop_from_attribute(segmentation) -> tuple[int, int, int] | None:
    text = segmentation.GetAttribute(CROP_ATTRIBUTE) or ""
    return tuple(int(v) for v in text.split(",")) if text else None


def resolve_bundle(context: SceneContext, segmentation) -> Path:
    """The bundle file of a segmentation: as stored, else relative to the scene's folder; one-line error."""
    stored = segmentation.GetAttribute(BUNDLE_ATTRIBUTE) or ""
    if not stored:
        raise InputError(
            f"{segmentation.GetName()}: no results bundle is recorded for this segmentation; "
            "segment the case again to change its heads or threshold"
        )
    candidates = [Path(stored)]
    # Slicer sets the root directory when it opens a scene; a bare scene only knows the file it came from.
    root = context.scene.GetRootDirectory() or os.path.dirname(context.scene.GetURL() or "")
    if not os.path.isabs(stored) and root:
        candidates.insert(0, Path(root) / stored)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise InputError(
        f"{stored}: the results bundle of {segmentation.GetName()} is missing; segment the case "
        "again to change its heads or threshold"
    )


def write_review(segmentation, decision: str) -> None:
    """The reviewer's decision on the node and as each segment's status (Completed or Flagged)."""
    was_modifying = segmentation.StartModify()
    segmentation.SetAttribute(REVIEWER_ATTRIBUTE, decision)
    segmentation.SetAttribute(SOURCE_ATTRIBUTE, SOURCE_BY_REVIEW[decision])
    content = segmentation.GetSegmentation()
    for index in range(content.GetNumberOfSegments()):
        segment = content.GetNthSegment(index)
        SegmentsLogic.SetSegmentStatus(segment, STATUS_BY_REVIEW[decision])
        segment.SetTag(REVIEWER_ATTRIBUTE, decision)
    segmentation.EndModify(was_modifying)


def case_state_from_node(segmentation, input_node, status: str = DONE) -> CaseState:
    """A CaseState from what a segmentation node stores (after a run, or after reopening a scene)."""
    decision = read_decision(segmentation)
    reviewer = segmentation.GetAttribute(REVIEWER_ATTRIBUTE) or ""
    score = decision.get("AULANormalized")
    threshold = decision.get("Threshold")
    estimate = decision.get("EstimatedDice")
    return CaseState(
        name=input_node.GetName() if input_node is not None else segmentation.GetName(),
        input_id=input_node.GetID() if input_node is not None else None,
        status=status,
        segmentation_id=segmentation.GetID(),
        model_name=decision.get("ModelName", ""),
        model_path=segmentation.GetAttribute(MODEL_PATH_ATTRIBUTE) or "",
        kept_heads=heads_from_attribute(decision.get("KeptHeads", "")),
        threshold=float(threshold) if threshold else None,
        score=float(score) if score else None,
        model_decision=decision.get("Decision", FLAGGED),
        reviewer_decision=reviewer,
        decision_source=segmentation.GetAttribute(SOURCE_ATTRIBUTE) or SOURCE_MODEL,
        bundle_path=segmentation.GetAttribute(BUNDLE_ATTRIBUTE) or "",
        estimated_dice=float(estimate) if estimate else None,
        estimated_dice_text=decision.get("EstimatedDiceText", ""),
    )


def restore_results(context: SceneContext) -> list[tuple[CaseState, CaseResult]]:
    """Every LayerEnsembles segmentation in a (reopened) scene, as cases and result handles.

    The handles carry no prediction yet: it is loaded from the bundle when the case is recombined.
    """
    restored = []
    for segmentation in context.nodes_by_class("vtkMRMLSegmentationNode"):
        if segmentation.GetAttribute(ROLE_ATTRIBUTE) != "segmentation":
            continue
        if segmentation.GetAttribute(PREFIX + "UserEdited") == "true":
            continue  # an edited earlier result, kept beside its recombined successor
        input_node = segmentation.GetNodeReference(INPUT_REFERENCE_ROLE)
        if input_node is None:
            continue
        heatmaps = {}
        for role_index in range(segmentation.GetNumberOfNodeReferenceRoles()):
            role = segmentation.GetNthNodeReferenceRole(role_index)
            if role.startswith(HEATMAP_ROLE_PREFIX) and segmentation.GetNodeReference(role) is not None:
                heatmaps[role[len(HEATMAP_ROLE_PREFIX) :]] = segmentation.GetNodeReferenceID(role)
        result = CaseResult(
            input_node.GetID(),
            segmentation.GetID(),
            heatmaps,
            segmentation.GetNodeReferenceID(TABLE_ROLE) or "",
            segmentation.GetNodeReferenceID(CHART_ROLE) or "",
            None,
            None,
            crop_from_attribute(segmentation),
        )
        restored.append((case_state_from_node(segmentation, input_node, RESTORED), result))
    return restored

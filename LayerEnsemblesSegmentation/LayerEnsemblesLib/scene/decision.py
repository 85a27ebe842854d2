"""The AULA score and the accept/flag decision, written where Slicer keeps them across save and reload.

Node attributes and segment tags are saved with the scene (the .mrml file and the .seg.nrrd header), so
a reviewer who reopens a scene sees the same score and decision. The decision is also the segment status
Slicer shows in the segments table: accepted results are "Completed", flagged ones "Flagged".
"""

from __future__ import annotations

from typing import Any

import slicer
import vtk

PREFIX = "LayerEnsembles."
ACCEPTED = "accepted"
FLAGGED = "flagged"
SegmentsLogic = slicer.vtkSlicerSegmentationsModuleLogic
STATUS_BY_DECISION = {ACCEPTED: SegmentsLogic.Completed, FLAGGED: SegmentsLogic.Flagged}


def _format(value: float) -> str:
    return f"{float(value):.6g}"


def store_decision(node, prediction: Any, model_name: str, classes) -> None:
    """Write score, threshold, per-class AULA and decision on the segmentation node and its segments."""
    from .segmentation import segment_id

    aula = prediction.aula
    first, stop = prediction.head_range
    estimate = getattr(prediction, "estimated_dice", None)
    attributes = {
        "AULA": _format(aula.raw.get("union", float("nan"))),
        "AULANormalized": _format(prediction.score),
        "Threshold": _format(prediction.threshold),
        "ThresholdSource": str(prediction.threshold_source),
        "Decision": str(prediction.decision),
        "ModelName": str(model_name),
        "KeptHeads": f"{first}:{stop}",
        "KeptHeadNames": ",".join(prediction.head_names),
        "Reason": str(getattr(prediction, "reason", "")),
        "EmptyForeground": "true" if aula.empty_foreground else "false",
        "EmptyClasses": ",".join(aula.empty_classes),
        # The model's estimated Dice for this result ("" value when it has no calibration for it).
        "EstimatedDice": _format(estimate.value) if estimate is not None else "",
        "EstimatedDiceText": str(getattr(prediction, "estimated_dice_text", "") or ""),
    }
    for name, value in aula.raw.items():
        attributes[f"AULA.{name}"] = _format(value)
    for name, value in aula.normalized.items():
        attributes[f"AULANormalized.{name}"] = _format(value)
    was_modifying = node.StartModify()
    for key, value in attributes.items():
        node.SetAttribute(PREFIX + key, value)
    segmentation = node.GetSegmentation()
    status = STATUS_BY_DECISION[ACCEPTED if prediction.decision == ACCEPTED else FLAGGED]
    for info in classes:
        if int(info.value) == 0:
            continue
        segment = segmentation.GetSegment(segment_id(info.value))
        if segment is None:
            continue
        empty = info.name in aula.empty_classes
        SegmentsLogic.SetSegmentStatus(segment, SegmentsLogic.Flagged if empty else status)
        segment.SetTag(PREFIX + "Decision", FLAGGED if empty else str(prediction.decision))
        segment.SetTag(PREFIX + "AULANormalized", _format(aula.normalized.get(info.name, float("nan"))))
        segment.SetTag(PREFIX + "AULA", _format(aula.raw.get(info.name, float("nan"))))
        segment.SetTag(PREFIX + "Reason", "empty prediction for this class" if empty else
                       f"image AULA {prediction.score:.3f} vs threshold {prediction.threshold:.3f}")
    node.EndModify(was_modifying)


def read_decision(node) -> dict[str, str]:
    """Every LayerEnsembles attribute of a segmentation node, without the prefix."""
    names = node.GetAttributeNames() or ()
    return {name[len(PREFIX):]: node.GetAttribute(name) for name in names if name.startswith(PREFIX)}


def segment_tag(segment, name: str) -> str:
    """A segment tag's value ("" when absent); the wrapped C++ call returns it through a reference."""
    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else ""


def segment_status(node, segment_identifier: str) -> str:
    """The segment's status as Slicer writes it in the ``Segmentation.Status`` tag (e.g. "completed")."""
    segment = node.GetSegmentation().GetSegment(segment_identifier)
    return SegmentsLogic.GetSegmentStatusAsMachineReadableString(SegmentsLogic.GetSegmentStatus(segment))

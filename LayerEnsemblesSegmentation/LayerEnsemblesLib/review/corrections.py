"""A reviewer's corrected segmentation as a label-map file beside the case's outputs, never over one.

The model's output and any earlier correction stay as they are: each save takes the next free name
(``<case>_corrected.nii.gz``, ``<case>_corrected_2.nii.gz``, ...) unless the caller explicitly names an
existing correction to replace. The file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..fileio import atomic_write_image
from ..scene.geometry import image_from_volume
from ..scene.segmentation import segment_array

CORRECTED_SUFFIX = "_corrected"
CLASS_PREFIX = "class_"  # scene.segmentation.segment_id


def next_correction_path(folder: str | Path, case_name: str, extension: str = ".nii.gz") -> Path:
    """The first ``<case>_corrected[_N]<extension>`` in ``folder`` that does not exist yet."""
    folder = Path(folder)
    candidate = folder / f"{case_name}{CORRECTED_SUFFIX}{extension}"
    number = 2
    while candidate.exists():
        candidate = folder / f"{case_name}{CORRECTED_SUFFIX}_{number}{extension}"
        number += 1
    return candidate


def class_values(segmentation_node) -> list[int]:
    """The label values of the segmentation's class segments (IDs ``class_<value>``), ascending."""
    ids = segmentation_node.GetSegmentation().GetSegmentIDs()
    return sorted(
        int(sid[len(CLASS_PREFIX) :])
        for sid in ids
        if sid.startswith(CLASS_PREFIX) and sid[len(CLASS_PREFIX) :].isdigit()
    )


def labels_from_segmentation(segmentation_node, input_node) -> sitk.Image:
    """The segmentation's class segments as one label map on the input volume's grid."""
    reference = image_from_volume(input_node)
    labels = np.zeros(tuple(reversed(reference.GetSize())), dtype=np.uint8)
    for value in class_values(segmentation_node):
        mask = segment_array(segmentation_node, value)
        if mask.shape != labels.shape:
            raise ValueError(f"{segmentation_node.GetName()}: segment geometry differs from the input volume")
        labels[mask] = value
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(reference)
    return image


def save_correction(
    segmentation_node, input_node, folder: str | Path, case_name: str, replace: str | Path | None = None
) -> Path:
    """Write the corrected label map; ``replace`` (an earlier correction's path) is the only overwrite."""
    path = Path(replace) if replace else next_correction_path(folder, case_name)
    atomic_write_image(
        path, labels_from_segmentation(segmentation_node, input_node), overwrite=replace is not None
    )
    return path

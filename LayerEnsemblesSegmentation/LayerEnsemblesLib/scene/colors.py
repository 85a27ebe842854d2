"""The colour table the heatmaps use, shipped with the extension rather than taken from Slicer's files.

Slicer's file-based tables (Inferno, ColdToHotRainbow...) are absent from slicer-core and their node IDs
depend on the installation, so the heatmap table is built here: a user-type table whose low end is pale
(the few uncertain voxels just above the visibility threshold) and whose high end is dark red (every head
disagrees). It is found again by its attribute, so repeated runs and reloaded scenes share one table.
"""

from __future__ import annotations

import numpy as np

from .bootstrap import SceneContext

COLOR_TABLE_NAME = "LayerEnsembles uncertainty"
COLOR_TABLE_ATTRIBUTE = "LayerEnsembles.ColorTable"
NUMBER_OF_COLORS = 256
# Yellow-orange-red anchors at 0, 1/3, 2/3 and 1: readable over grey anatomy, and monotonic in lightness
# so that the order survives colour-vision deficiencies and greyscale printing.
_ANCHORS = np.array([[255, 237, 160], [254, 178, 76], [240, 59, 32], [128, 0, 38]], dtype=float) / 255.0


def ramp(count: int = NUMBER_OF_COLORS) -> np.ndarray:
    """``count`` RGB rows in [0, 1] from the lowest to the highest uncertainty."""
    positions = np.linspace(0.0, 1.0, len(_ANCHORS))
    samples = np.linspace(0.0, 1.0, count)
    return np.stack([np.interp(samples, positions, _ANCHORS[:, channel]) for channel in range(3)], axis=1)


def heatmap_color_table(context: SceneContext):
    """The scene's heatmap colour table, created on first use."""
    for node in context.nodes_by_class("vtkMRMLColorTableNode"):
        if node.GetAttribute(COLOR_TABLE_ATTRIBUTE) == "heatmap":
            return node
    table = context.scene.AddNewNodeByClass("vtkMRMLColorTableNode", COLOR_TABLE_NAME)
    table.SetTypeToUser()
    table.SetNumberOfColors(NUMBER_OF_COLORS)
    for entry, (red, green, blue) in enumerate(ramp()):
        table.SetColor(entry, f"{entry / (NUMBER_OF_COLORS - 1):.3f}", red, green, blue, 1.0)
    table.SetAttribute(COLOR_TABLE_ATTRIBUTE, "heatmap")
    table.SetAttribute("Category", "LayerEnsembles")
    table.SetHideFromEditors(False)
    return table

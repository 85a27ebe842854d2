"""No array view outlives its image: ``sitk.GetArrayViewFromImage`` keeps no reference to the image.

A view of a temporary (``GetArrayViewFromImage(some_call(...))``) reads a buffer freed as soon as the call
returns; the allocator then reuses its first bytes, and the copy shows garbage there (a heatmap's first
voxels read 1.9e36 in one CI run). The static check catches the whole class; the run checks the heatmap
write that had it, many times, since a use-after-free shows only sometimes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "LayerEnsemblesSegmentation", ROOT / "Testing"]


def views_of_temporaries(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "GetArrayViewFromImage"
            and node.args
            and isinstance(node.args[0], ast.Call)
        ):
            lines.append(node.lineno)
    return lines


def test_no_array_view_is_taken_of_a_temporary_image():
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for folder in SOURCES
        for path in sorted(folder.rglob("*.py"))
        if "__pycache__" not in path.parts
        for line in views_of_temporaries(path)
    ]
    assert not found, f"GetArrayViewFromImage of a temporary image (hold the image in a name): {found}"


def test_display_values_of_every_map_kind_match_the_displayed_image():
    from LayerEnsemblesLib.scene.heatmaps import HEATMAP_KINDS, display_image, write_display_values

    rng = np.random.default_rng(0)
    for kind in HEATMAP_KINDS:
        image = sitk.GetImageFromArray(rng.random((20, 24, 28), dtype=np.float32))
        expected = sitk.GetArrayFromImage(display_image(kind, image, num_classes=3))
        for _ in range(50):  # churn the allocator between writes so that a freed buffer gets reused
            out = np.full(expected.shape, np.nan, np.float32)
            write_display_values(kind, image, 3, out)
            np.testing.assert_array_equal(out, expected, err_msg=kind)

"""The agreement curve as an inline SVG, read from the chart and table the scene logic keeps per case.

The scene already holds the curve (Dice between adjacent kept heads, one column per class and the union)
and a chart title carrying the AULA; drawing it here as SVG keeps the page free of a plotting library.
"""

from __future__ import annotations

import html
import math

from ..scene.plots import CURVE_COLORS, PAIR_INDEX_COLUMN, PAIR_LABEL_COLUMN
from ..scene.results import CHART_ROLE, TABLE_ROLE

WIDTH, HEIGHT, MARGIN = 640, 160, 34


def curve_from_scene(context, segmentation_id: str | None) -> tuple[str, dict[str, list[float]]]:
    """(chart title, {curve name: values}) of a case's segmentation; empty when it has none."""
    node = context.node(segmentation_id)
    if node is None:
        return "", {}
    chart, table_node = node.GetNodeReference(CHART_ROLE), node.GetNodeReference(TABLE_ROLE)
    if chart is None or table_node is None or table_node.GetTable() is None:
        return "", {}
    table = table_node.GetTable()
    curves = {}
    for index in range(table.GetNumberOfColumns()):
        column = table.GetColumn(index)
        if column.GetName() in (PAIR_INDEX_COLUMN, PAIR_LABEL_COLUMN):
            continue
        curves[column.GetName()] = [column.GetValue(row) for row in range(column.GetNumberOfTuples())]
    return chart.GetTitle() or "", curves


def curve_svg(title: str, curves: dict[str, list[float]]) -> str:
    """Polylines on a [0, 1] Dice axis, one per curve, the title (with the AULA) above them."""
    if not curves:
        return ""
    count = max(len(values) for values in curves.values())
    span_x = WIDTH - 2 * MARGIN
    span_y = HEIGHT - 2 * MARGIN

    def point(position: int, value: float) -> str:
        x = MARGIN + (span_x * position / max(count - 1, 1))
        y = MARGIN + span_y * (1.0 - min(max(value, 0.0), 1.0))
        return f"{x:.1f},{y:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" height="100%" preserveAspectRatio="xMinYMin meet" id="le-curve-svg">',
        f'<text x="{MARGIN}" y="16" font-size="12" fill="#222">{html.escape(title)}</text>',
        f'<line x1="{MARGIN}" y1="{HEIGHT - MARGIN}" x2="{WIDTH - MARGIN}" y2="{HEIGHT - MARGIN}" '
        'stroke="#888"/>',
        f'<line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{HEIGHT - MARGIN}" stroke="#888"/>',
        f'<text x="4" y="{MARGIN + 4}" font-size="10" fill="#555">1.0</text>',
        f'<text x="4" y="{HEIGHT - MARGIN + 4}" font-size="10" fill="#555">0.0</text>',
        f'<text x="{MARGIN}" y="{HEIGHT - 8}" font-size="10" fill="#555">adjacent kept-head pairs, '
        "shallow to deep (Dice)</text>",
    ]
    for index, (name, values) in enumerate(curves.items()):
        color = CURVE_COLORS[index % len(CURVE_COLORS)] if name != "union" else (0.1, 0.1, 0.1)
        rgb = ",".join(str(int(channel * 255)) for channel in color)
        points = " ".join(point(i, v) for i, v in enumerate(values) if not math.isnan(v))
        width = 2.5 if name == "union" else 1.5
        parts.append(
            f'<polyline fill="none" stroke="rgb({rgb})" stroke-width="{width}" points="{points}">'
            f"<title>{html.escape(name)}</title></polyline>"
        )
        parts.append(
            f'<text x="{WIDTH - 110}" y="{MARGIN + 12 * index}" font-size="10" '
            f'fill="rgb({rgb})">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)

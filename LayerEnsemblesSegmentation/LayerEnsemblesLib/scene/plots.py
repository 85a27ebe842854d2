"""The layer-agreement curve (the paper's Fig. 1 right): Dice between adjacent kept heads, with the AULA.

One table row per adjacent head pair, one column per curve (each foreground class and their union), one
plot series per curve, and a chart whose title carries the AULA, so the area the score measures is the
area the reviewer sees under the curve. Updated in place on recombination.
"""

from __future__ import annotations

from typing import Any

import slicer
import vtk

from .bootstrap import SceneContext
from .segmentation import ROLE_ATTRIBUTE, place_next_to

PAIR_INDEX_COLUMN = "pair"
PAIR_LABEL_COLUMN = "heads"
CURVE_COLORS = [(0.85, 0.1, 0.1), (0.9, 0.62, 0.0), (0.34, 0.71, 0.91), (0.0, 0.62, 0.45), (0.8, 0.47, 0.65)]


def chart_title(prediction: Any) -> str:
    """The curves' union AULA, then the score the decision is made on, named: the model may decide on
    another score than the normalised union AULA (e.g. the mean over structures), and one number must
    not pass for the other."""
    from ..decision_scores import UNION_SCORE, label

    raw = prediction.aula.raw.get("union", float("nan"))
    score_name = getattr(prediction, "score_name", UNION_SCORE)
    return (
        f"Layer agreement: AULA {raw:.2f} (union); {label(score_name)} {prediction.score:.3f}, "
        f"threshold {prediction.threshold:.3f}, {prediction.decision}"
    )


def _fill_table(table_node, prediction: Any) -> list[str]:
    aula = prediction.aula
    # Classes first, the union last (drawn on top, and the curve the AULA in the title refers to).
    curve_names = sorted(aula.curves, key=lambda name: name == "union")
    table = vtk.vtkTable()
    index_column = vtk.vtkDoubleArray()
    index_column.SetName(PAIR_INDEX_COLUMN)
    label_column = vtk.vtkStringArray()
    label_column.SetName(PAIR_LABEL_COLUMN)
    count = len(aula.pair_labels)
    for position, label in enumerate(aula.pair_labels):
        index_column.InsertNextValue(position + 1)
        label_column.InsertNextValue(str(label))
    table.AddColumn(index_column)
    table.AddColumn(label_column)
    for name in curve_names:
        column = vtk.vtkDoubleArray()
        column.SetName(name)
        values = list(aula.curves[name])
        for position in range(count):
            column.InsertNextValue(float(values[position]) if position < len(values) else float("nan"))
        table.AddColumn(column)
    table_node.SetAndObserveTable(table)
    table_node.SetUseColumnTitleAsColumnHeader(True)
    return curve_names


def write_agreement_plot(
    context: SceneContext, input_node, prediction: Any, table_node=None, chart_node=None
):
    """Create or update the table and chart of the layer-agreement curves; returns (table, chart)."""
    scene = context.scene
    base = input_node.GetName()
    if table_node is None:
        table_node = scene.AddNewNodeByClass(
            "vtkMRMLTableNode", scene.GenerateUniqueName(f"{base} layer agreement")
        )
        table_node.SetAttribute(ROLE_ATTRIBUTE, "agreement table")
        place_next_to(context, table_node, input_node)
    if chart_node is None:
        chart_node = scene.AddNewNodeByClass(
            "vtkMRMLPlotChartNode", scene.GenerateUniqueName(f"{base} layer agreement chart")
        )
        chart_node.SetAttribute(ROLE_ATTRIBUTE, "agreement chart")
        place_next_to(context, chart_node, input_node)
    curve_names = _fill_table(table_node, prediction)

    existing = {}
    for index in range(chart_node.GetNumberOfPlotSeriesNodes()):
        series = chart_node.GetNthPlotSeriesNode(index)
        if series is not None:
            existing[series.GetYColumnName()] = series
    for stale in set(existing) - set(curve_names):
        chart_node.RemovePlotSeriesNodeID(existing[stale].GetID())
        scene.RemoveNode(existing[stale])
    for position, name in enumerate(curve_names):
        series = existing.get(name)
        if series is None:
            series = scene.AddNewNodeByClass(
                "vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(f"{base} {name}")
            )
            chart_node.AddAndObservePlotSeriesNodeID(series.GetID())
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName(PAIR_INDEX_COLUMN)
        series.SetYColumnName(name)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        series.SetLineWidth(4 if name == "union" else 2)
        color = CURVE_COLORS[0] if name == "union" else CURVE_COLORS[1 + position % (len(CURVE_COLORS) - 1)]
        series.SetColor(*color)
    chart_node.SetTitle(chart_title(prediction))
    chart_node.SetXAxisTitle("adjacent kept-head pair (shallow to deep)")
    chart_node.SetYAxisTitle("Dice between the pair's masks")
    chart_node.SetYAxisRangeAuto(False)
    chart_node.SetYAxisRange(0.0, 1.05)
    chart_node.SetLegendVisibility(True)
    return table_node, chart_node


PLOT_VIEW_SINGLETON = "LayerEnsembles"


def agreement_plot_view(context: SceneContext, chart_id: str | None):
    """The module's one plot view node (a singleton: reused on every run), showing ``chart_id``."""
    view = context.scene.GetSingletonNode(PLOT_VIEW_SINGLETON, "vtkMRMLPlotViewNode")
    if view is None:
        view = context.scene.CreateNodeByClass("vtkMRMLPlotViewNode")
        view.UnRegister(None)  # CreateNodeByClass hands over a reference that Python also holds
        view.SetSingletonTag(PLOT_VIEW_SINGLETON)
        view.SetName("LayerEnsembles plot view")
        view.SetLayoutLabel("LE")
        view = context.scene.AddNode(view)
    view.SetPlotChartNodeID(chart_id)
    return view

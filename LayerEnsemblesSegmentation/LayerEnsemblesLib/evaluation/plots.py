"""The report's figures, drawn with matplotlib's object API on the Agg canvas.

``matplotlib.figure.Figure`` with ``FigureCanvasAgg`` needs no pyplot and no global backend switch, so
drawing a report never disturbs an application that has its own GUI backend (Slicer). Figures are
rendered to memory and written atomically, like every other output.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_bytes
from .qc import QCCurve

COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue(), overwrite=True)


def qc_grid(
    panels: Sequence[tuple[str, dict[str, QCCurve], QCCurve, QCCurve]],
    threshold: float,
    metric: str,
    path: Path,
) -> Path:
    """Fig. 2: one panel per method; one curve per score, with the random and ideal references.

    ``panels`` holds (method, {score label: curve}, random, ideal).
    """
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    figure = _figure(4.2 * columns, 3.6 * rows)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for axis, (method, curves, random, ideal) in zip(axes, panels, strict=False):
        for index, (label, curve) in enumerate(curves.items()):
            axis.plot(
                curve.fractions,
                curve.remaining,
                color=COLORS[index % len(COLORS)],
                label=f"{label} ({curve.auc:.3f})",
            )
        axis.plot(random.fractions, random.remaining, "--", color="grey", label=f"random ({random.auc:.3f})")
        axis.plot(ideal.fractions, ideal.remaining, ":", color="black", label=f"ideal ({ideal.auc:.3f})")
        axis.set_title(method)
        axis.set_xlabel("fraction of cases flagged")
        axis.set_ylabel(f"remaining with {metric} < {threshold:g} (/N)")
        axis.set_xlim(0, 1)
        axis.set_ylim(bottom=0)
        axis.legend(fontsize=7, title="score (QC AUC)", title_fontsize=7)
    for axis in axes[len(panels) :]:
        axis.set_visible(False)
    return _save(figure, path)


def qc_primary(
    curves: Sequence[tuple[str, QCCurve, QCCurve, QCCurve]], threshold: float, metric: str, path: Path
) -> Path:
    """One curve per method (its main score), each with its own ideal reference (dotted, same colour)."""
    figure = _figure(5.6, 4.2)
    axis = figure.subplots()
    for index, (label, curve, random, ideal) in enumerate(curves):
        color = COLORS[index % len(COLORS)]
        axis.plot(curve.fractions, curve.remaining, color=color, label=f"{label} ({curve.auc:.3f})")
        axis.plot(ideal.fractions, ideal.remaining, ":", color=color, linewidth=0.9)
        axis.plot(random.fractions, random.remaining, "--", color=color, linewidth=0.6, alpha=0.6)
    axis.set_xlabel("fraction of cases flagged (most uncertain first)")
    axis.set_ylabel(f"remaining with {metric} < {threshold:g} (/N)")
    axis.set_title("Quality control: dotted = ideal, dashed = random")
    axis.set_xlim(0, 1)
    axis.set_ylim(bottom=0)
    axis.legend(fontsize=8, title="method: score (QC AUC)", title_fontsize=8)
    return _save(figure, path)


def head_curves(series: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, str]], path: Path) -> Path:
    """Fig. 3: Dice and NLL against the number of skipped heads; ``series`` = (label, k, dice, nll, style)."""
    figure = _figure(9.0, 3.6)
    dice_axis, nll_axis = figure.subplots(1, 2)
    for index, (label, skipped, dice, nll, style) in enumerate(series):
        color = COLORS[(index // 2) % len(COLORS)]
        dice_axis.plot(skipped, dice, style, color=color, marker="o", markersize=3, label=label)
        nll_axis.plot(skipped, nll, style, color=color, marker="o", markersize=3, label=label)
    dice_axis.set_xlabel("skipped shallow heads k")
    dice_axis.set_ylabel("mean Dice")
    nll_axis.set_xlabel("skipped shallow heads k")
    nll_axis.set_ylabel("mean NLL")
    for axis in (dice_axis, nll_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return _save(figure, path)


def score_scatter(
    panels: Sequence[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]],
    metric: str,
    threshold: float,
    path: Path,
) -> Path:
    """Score against Dice per method; ``panels`` = (method, score label, score, dice, is_clean)."""
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    figure = _figure(4.0 * columns, 3.4 * rows)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for axis, (method, label, score, dice, clean) in zip(axes, panels, strict=False):
        axis.scatter(score[~clean], dice[~clean], s=9, alpha=0.6, color=COLORS[1], label="shifted")
        axis.scatter(score[clean], dice[clean], s=12, alpha=0.8, color=COLORS[0], label="clean")
        axis.axhline(threshold, color="grey", linestyle="--", linewidth=0.8)
        axis.set_title(method)
        axis.set_xlabel(label)
        axis.set_ylabel(metric)
        axis.legend(fontsize=7)
    for axis in axes[len(panels) :]:
        axis.set_visible(False)
    return _save(figure, path)

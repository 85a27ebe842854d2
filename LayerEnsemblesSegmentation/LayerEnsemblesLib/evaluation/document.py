"""A report as a list of blocks, rendered both as Markdown and as a standalone HTML page.

The report has only headings, paragraphs, tables and figures, so a tiny renderer of its own is simpler
than a Markdown dependency and gives an HTML page that opens in any browser next to its PNG files.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def to_float(value: Any) -> float:
    """A CSV cell as a number; text and empty cells become NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def p_text(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def number_text(value: float, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


@dataclass
class Document:
    """Blocks rendered both as Markdown and as HTML: ("h", level, text), ("p", text),
    ("table", header, rows), ("img", file, caption)."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.blocks.append(("table", list(header), [list(r) for r in rows]))

    def image(self, file: str, caption: str) -> None:
        self.blocks.append(("img", file, caption))

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for block in self.blocks:
            if block[0] == "h":
                lines += [f"{'#' * block[1]} {block[2]}", ""]
            elif block[0] == "p":
                lines += [block[1], ""]
            elif block[0] == "table":
                header, rows = block[1], block[2]
                lines.append("| " + " | ".join(header) + " |")
                lines.append("|" + "|".join("---" for _ in header) + "|")
                lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
                lines.append("")
            elif block[0] == "img":
                lines += [f"![{block[2]}]({block[1]})", "", f"*{block[2]}*", ""]
        return "\n".join(lines)

    def html(self) -> str:
        parts = [
            "<!DOCTYPE html>",
            "<html><head><meta charset='utf-8'>",
            f"<title>{html.escape(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
            "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
            "img{max-width:100%}figcaption{font-style:italic}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        for block in self.blocks:
            if block[0] == "h":
                parts.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
            elif block[0] == "p":
                parts.append(f"<p>{_inline_html(block[1])}</p>")
            elif block[0] == "table":
                parts.append(
                    "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in block[1]) + "</tr>"
                )
                parts += [
                    "<tr>" + "".join(f"<td>{_inline_html(str(c))}</td>" for c in row) + "</tr>"
                    for row in block[2]
                ]
                parts.append("</table>")
            elif block[0] == "img":
                parts.append(
                    f"<figure><img src='{html.escape(block[1])}' alt='{html.escape(block[2])}'>"
                    f"<figcaption>{html.escape(block[2])}</figcaption></figure>"
                )
        parts.append("</body></html>")
        return "\n".join(parts)


def _inline_html(text: str) -> str:
    """Escape, then render Markdown's **bold** and `code` (the only inline markup the report uses)."""
    escaped = html.escape(text)
    for marker, tag in (("**", "b"), ("`", "code")):
        pieces = escaped.split(marker)
        escaped = "".join(p if i % 2 == 0 else f"<{tag}>{p}</{tag}>" for i, p in enumerate(pieces))
    return escaped

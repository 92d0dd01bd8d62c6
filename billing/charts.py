"""Server-side SVG bar charts for the revenue pages: no JavaScript, no charting dependency.

Pure: labels and integer amounts in, an SVG string out. Every label is escaped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from markupsafe import Markup, escape

logger = logging.getLogger(__name__)

BAR_HEIGHT = 22
GAP = 10
LABEL_WIDTH = 260
CHART_WIDTH = 420


def revenue_bars_svg(
    title: str, labels: Sequence[str], totals: Sequence[int], ai_parts: Sequence[int], value_text: Sequence[str],
    legend: tuple[str, str] = ("AI-enabled", "other revenue"),
) -> Markup:
    """Horizontal bars of each total, with the AI-enabled part drawn darker inside it. `legend` names
    the dark part and the rest, in the reader's language (the caller translates; this stays pure)."""
    if not (len(labels) == len(totals) == len(ai_parts) == len(value_text)):
        raise ValueError("labels, totals, ai_parts and value_text must have the same length")
    peak = max([*totals, 1])
    height = len(labels) * (BAR_HEIGHT + GAP) + 40
    width = LABEL_WIDTH + CHART_WIDTH + 150
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {width} {height}" '
        f'width="100%" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for row, (label, total, ai, text) in enumerate(zip(labels, totals, ai_parts, value_text, strict=True)):
        y = 10 + row * (BAR_HEIGHT + GAP)
        full = round(CHART_WIDTH * total / peak)
        ai_width = round(CHART_WIDTH * ai / peak)
        parts.append(f'<text x="{LABEL_WIDTH - 8}" y="{y + 16}" text-anchor="end" font-size="13">{escape(label)}</text>')
        parts.append(f'<rect x="{LABEL_WIDTH}" y="{y}" width="{full}" height="{BAR_HEIGHT}" fill="#9ec5fe"/>')
        if ai_width:
            parts.append(f'<rect x="{LABEL_WIDTH}" y="{y}" width="{ai_width}" height="{BAR_HEIGHT}" fill="#0b5cad"/>')
        parts.append(f'<text x="{LABEL_WIDTH + full + 6}" y="{y + 16}" font-size="13">{escape(text)}</text>')
    legend_y = height - 14
    parts.append(f'<rect x="{LABEL_WIDTH}" y="{legend_y - 10}" width="12" height="12" fill="#0b5cad"/>')
    parts.append(f'<text x="{LABEL_WIDTH + 18}" y="{legend_y}" font-size="12">{escape(legend[0])}</text>')
    parts.append(f'<rect x="{LABEL_WIDTH + 110}" y="{legend_y - 10}" width="12" height="12" fill="#9ec5fe"/>')
    parts.append(f'<text x="{LABEL_WIDTH + 128}" y="{legend_y}" font-size="12">{escape(legend[1])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))

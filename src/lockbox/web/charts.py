"""Server-rendered SVG charts with a title and description for screen readers; no script and no inline
style (the page CSP allows neither), so colours come from classes in app.css."""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

SERIES = 8  # colour classes s0..s7 in app.css


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def _count_max(value: float) -> int:
    """A top for a count axis with four whole-number steps (4, 8, 12, 20, 40 …)."""
    quarter = max(1.0, value / 4)
    exp = 10 ** math.floor(math.log10(quarter))
    step = next(m * exp for m in (1, 2, 3, 5, 10) if quarter <= m * exp)
    return int(4 * step)


def _fmt(value: float) -> str:
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


def _open(chart_id: str, width: int, height: int, title: str, desc: str) -> list[str]:
    return [
        f'<svg class="chart{" wide" if width >= 600 else ""}" id="{escape(chart_id)}" '
        f'viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="{escape(chart_id)}-t {escape(chart_id)}-d" preserveAspectRatio="xMinYMin meet">',
        f'<title id="{escape(chart_id)}-t">{escape(title)}</title>',
        f'<desc id="{escape(chart_id)}-d">{escape(desc)}</desc>',
    ]


def stacked_columns(chart_id: str, title: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[int]]],
                    *, desc: str = "") -> Markup:
    """One column per label (a day), stacked by series (a provider); a legend below."""
    width, plot_h, left, top, bottom = 720, 200, 44, 12, 34
    legend_rows = math.ceil(len(series) / 3) if series else 0
    height = top + plot_h + bottom + legend_rows * 20 + 8
    totals = [sum(values[i] for _, values in series) for i in range(len(labels))]
    ymax = _count_max(max(totals, default=0))
    out = _open(chart_id, width, height, title, desc or title)
    plot_w = width - left - 8
    out.append('<g class="axis">')
    for k in range(5):
        v = ymax * k / 4
        y = top + plot_h - plot_h * k / 4
        out.append(f'<line x1="{left}" x2="{width - 8}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
    out.append("</g>")
    slot = plot_w / max(1, len(labels))
    bar_w = max(2.0, slot * 0.7)
    every = max(1, math.ceil(len(labels) / 14))  # x labels that fit
    for i, label in enumerate(labels):
        x = left + i * slot + (slot - bar_w) / 2
        y = top + plot_h
        for s, (name, values) in enumerate(series):
            n = values[i]
            if not n:
                continue
            h = plot_h * n / ymax
            y -= h
            out.append(f'<rect class="bar s{s % SERIES}" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                       f'height="{h:.1f}"><title>{escape(name)}, {escape(label)}: {n}</title></rect>')
        if i % every == 0:
            out.append(f'<text class="xlabel" x="{x + bar_w / 2:.1f}" y="{top + plot_h + 16}" '
                       f'text-anchor="middle">{escape(label)}</text>')
    ly = top + plot_h + bottom
    for s, (name, values) in enumerate(series):
        col, row = s % 3, s // 3
        lx = left + col * 220
        yy = ly + row * 20
        out.append(f'<rect class="s{s % SERIES}" x="{lx}" y="{yy}" width="12" height="12"/>')
        out.append(f'<text class="legend" x="{lx + 18}" y="{yy + 10}">{escape(name[:28])} ({sum(values)})</text>')
    if not series:
        out.append(f'<text class="empty" x="{width / 2}" y="{top + plot_h / 2}" text-anchor="middle">'
                   "No messages in this period</text>")
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - every value above went through escape()


def horizontal_bars(chart_id: str, title: str, rows: Sequence[tuple[str, float, str]], *, desc: str = "",
                    markers: Sequence[float | None] | None = None, unit: str = "", width: int = 720,
                    top_value: float | None = None) -> Markup:
    """One bar per row: (label, value, text shown after the bar). ``markers`` draws a tick per row (a p90);
    ``top_value`` fixes the scale (100 for shares), which otherwise fits the largest value.

    ``width`` is the drawing's own width: a chart meant for half a page gets a narrower one, so its
    text is not scaled down with it."""
    left, right = (190, 170) if width >= 600 else (150, 80)
    room = 28 if width >= 600 else 21  # characters that fit left of the bars
    bar_h, gap, top = 20, 10, 8
    height = top + max(1, len(rows)) * (bar_h + gap) + 24
    values = [v for _, v, _ in rows] + [m for m in (markers or []) if m is not None]
    vmax = top_value or _nice_max(max(values, default=0))
    plot_w = width - left - right
    out = _open(chart_id, width, height, title, desc or title)
    for i, (label, value, text) in enumerate(rows):
        y = top + i * (bar_h + gap)
        w = plot_w * value / vmax
        out.append(f'<text class="ylabel" x="{left - 8}" y="{y + bar_h * 0.7:.1f}" text-anchor="end">'
                   f"{escape(label if len(label) <= room else label[:room - 1] + '…')}</text>")
        out.append(f'<rect class="bar s{i % SERIES}" x="{left}" y="{y}" width="{max(w, 1):.1f}" height="{bar_h}">'
                   f"<title>{escape(label)}: {escape(text)}</title></rect>")
        marker = markers[i] if markers else None
        if marker is not None:
            mx = left + plot_w * marker / vmax
            out.append(f'<line class="marker" x1="{mx:.1f}" x2="{mx:.1f}" y1="{y - 3}" y2="{y + bar_h + 3}"/>')
        out.append(f'<text class="value" x="{left + max(w, 1) + 6:.1f}" y="{y + bar_h * 0.7:.1f}">'
                   f"{escape(text)}</text>")
    axis_y = top + max(1, len(rows)) * (bar_h + gap) + 14
    out.append(f'<text class="axis-note" x="{left}" y="{axis_y}">0</text>')
    out.append(f'<text class="axis-note" x="{left + plot_w}" y="{axis_y}" text-anchor="end">'
               f"{_fmt(vmax)}{escape(unit)}</text>")
    if not rows:
        out.append(f'<text class="empty" x="{width / 2}" y="{top + 16}" text-anchor="middle">No data in this period'
                   "</text>")
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - every value above went through escape()

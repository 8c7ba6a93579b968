"""Small self-contained SVG charts for loopline's HTML pages: axes with round ticks, labels, a legend.

No script and nothing fetched, so a page opens offline and in a mail attachment.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2")


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]
    color: str = ""
    dashed: bool = False


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5 or 5 times a power of ten apart)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    value = start
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(value, 12))
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.3g}"
    return f"{v:.4g}"


def line_chart(
    x_labels: Sequence[str],
    series: Sequence[Series],
    *,
    title: str = "",
    y_label: str = "",
    markers: Sequence[tuple[int, str]] = (),
    width: int = 760,
    height: int = 300,
) -> str:
    """Lines over categorical x positions (windows, checks), y axis with round ticks, a legend; ``markers``
    draw a vertical tick with a tooltip at an x index (e.g. a promotion)."""
    e = html.escape
    left, right, top, bottom = 56, 16, 28 if title else 12, 46
    values = [v for s in series for v in s.values if v is not None and math.isfinite(v)]
    if not values or not x_labels:
        return f'<p class="muted">{e(title)}: no data</p>'
    ticks = nice_ticks(min(values), max(values))
    y0, y1 = ticks[0], ticks[-1]
    n = len(x_labels)
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n)

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - y0) / (y1 - y0 or 1))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    if title:
        out.append(f'<text x="{left}" y="16" font-size="13" font-weight="600">{e(title)}</text>')
    for t in ticks:
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#eee"/>')
        out.append(
            f'<text x="{left - 6}" y="{y(t) + 4:.1f}" font-size="11" text-anchor="end" fill="#555">{_fmt(t)}</text>'
        )
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="#999"/>')
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#999"/>')
    every = max(1, math.ceil(n / 14))
    for i, label in enumerate(x_labels):
        if i % every == 0:
            out.append(
                f'<text x="{x(i):.1f}" y="{top + plot_h + 16}" font-size="11" text-anchor="middle" '
                f'fill="#555">{e(label)}</text>'
            )
    if y_label:
        out.append(
            f'<text x="12" y="{top + plot_h / 2:.1f}" font-size="11" fill="#555" '
            f'transform="rotate(-90 12 {top + plot_h / 2:.1f})" text-anchor="middle">{e(y_label)}</text>'
        )
    for i, text in markers:
        out.append(
            f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{top}" y2="{top + plot_h}" stroke="#bbb" '
            f'stroke-dasharray="2,3"><title>{e(text)}</title></line>'
        )
    for k, s in enumerate(series):
        color = s.color or PALETTE[k % len(PALETTE)]
        dash = ' stroke-dasharray="6,4"' if s.dashed else ""
        points = [(x(i), y(v)) for i, v in enumerate(s.values) if v is not None and math.isfinite(v)]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        for (px, py), v in zip(points, [v for v in s.values if v is not None and math.isfinite(v)], strict=True):
            out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{color}"><title>{e(s.name)}: {v:.4g}</title>')
            out.append("</circle>")
        lx = left + 8 + k * 170
        out.append(f'<line x1="{lx}" x2="{lx + 18}" y1="{height - 10}" y2="{height - 10}" stroke="{color}" ')
        out.append(f'stroke-width="3"{dash}/>')
        out.append(f'<text x="{lx + 24}" y="{height - 6}" font-size="12">{e(s.name)}</text>')
    out.append("</svg>")
    return "".join(out)

"""Server-rendered SVG charts: no JavaScript library, no CDN, works offline (issue 5)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup, escape

from .formatting import ms

WIDTH, HEIGHT = 960, 260
LEFT, RIGHT, TOP, BOTTOM = 52, 64, 28, 28


def _nice_max(value: float) -> float:
    """Round an axis maximum up to 1, 2 or 5 × 10ⁿ so the labels read well."""
    if value <= 0:
        return 1
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _hhmm(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M")


def timeline_svg(buckets: list[dict[str, Any]], step: int, *, title: str = "Timeline") -> Markup:
    """Bars: requests (failures in red at their foot); line: p95 total latency (right axis)."""
    n = max(len(buckets), 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    max_req = _nice_max(max((b["requests"] for b in buckets), default=0))
    p95s = [b["p95_ms"] for b in buckets if b.get("p95_ms") is not None]
    max_ms = _nice_max(max(p95s, default=0))
    bar_w = plot_w / n
    out = [f'<svg class="ap-chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" xmlns="http://www.w3.org/2000/svg" '
           f'aria-label="{escape(title)}"><title>{escape(title)}</title>']
    # grid and axes
    for i in range(5):
        y = TOP + plot_h * i / 4
        out.append(f'<line class="ap-grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="ap-axis" x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">'
                   f'{max_req * (4 - i) / 4:,.0f}</text>')
        out.append(f'<text class="ap-axis ap-axis-ms" x="{WIDTH - RIGHT + 4}" y="{y + 4:.1f}">'
                   f'{escape(ms(max_ms * (4 - i) / 4) if i < 4 else "0")}</text>')
    # bars
    for i, b in enumerate(buckets):
        x = LEFT + i * bar_w
        h_req = plot_h * b["requests"] / max_req
        h_fail = plot_h * b["failures"] / max_req
        tip = (f'{_hhmm(b["start"])}–{_hhmm(b["start"] + step)} UTC: {b["requests"]:,} requests, '
               f'{b["failures"]:,} failures, p95 {ms(b.get("p95_ms"))}')
        out.append(f'<g><title>{escape(tip)}</title>'
                   f'<rect class="ap-bar-req" x="{x + 0.5:.1f}" y="{TOP + plot_h - h_req:.1f}" '
                   f'width="{max(bar_w - 1, 0.5):.1f}" height="{h_req:.1f}"/>')
        if b["failures"]:
            out.append(f'<rect class="ap-bar-fail" x="{x + 0.5:.1f}" y="{TOP + plot_h - h_fail:.1f}" '
                       f'width="{max(bar_w - 1, 0.5):.1f}" height="{max(h_fail, 1):.1f}"/>')
        out.append("</g>")
    # p95 line
    points = [f'{LEFT + (i + 0.5) * bar_w:.1f},{TOP + plot_h - plot_h * b["p95_ms"] / max_ms:.1f}'
              for i, b in enumerate(buckets) if b.get("p95_ms") is not None]
    if len(points) > 1:
        out.append(f'<polyline class="ap-line-p95" points="{" ".join(points)}"/>')
    for point in points if len(points) <= 100 else []:
        x, y = point.split(",")
        out.append(f'<circle class="ap-dot-p95" cx="{x}" cy="{y}" r="2"/>')
    # time labels
    ticks = 6
    for t in range(ticks + 1):
        i = round(t * (n - 1) / ticks) if n > 1 else 0
        if buckets:
            x = LEFT + (i + 0.5) * bar_w
            out.append(f'<text class="ap-axis" x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
                       f'{_hhmm(buckets[i]["start"])}</text>')
    # legend
    out.append(f'<g class="ap-legend"><rect class="ap-bar-req" x="{LEFT}" y="6" width="10" height="10"/>'
               f'<text x="{LEFT + 14}" y="15">requests</text>'
               f'<rect class="ap-bar-fail" x="{LEFT + 84}" y="6" width="10" height="10"/>'
               f'<text x="{LEFT + 98}" y="15">failures</text>'
               f'<line class="ap-line-p95" x1="{LEFT + 160}" x2="{LEFT + 176}" y1="11" y2="11"/>'
               f'<text x="{LEFT + 180}" y="15">p95 latency (right axis)</text>'
               f'<text x="{WIDTH - RIGHT}" y="15" text-anchor="end">bucket {escape(_step_label(step))}, UTC</text></g>')
    out.append("</svg>")
    return Markup("".join(out))


def _step_label(step: int) -> str:
    return f"{step} s" if step < 60 else f"{step // 60} min"

"""A small server-side SVG per usage window: used % over its history and the forecast line (no JavaScript)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from accountpool.forecast import Forecast, Sample
from markupsafe import Markup, escape

WIDTH, HEIGHT = 320, 110
LEFT, RIGHT, TOP, BOTTOM = 30, 8, 8, 18
FUTURE_SHARE = 0.5
"""The forecast part of the x axis when the reset is unknown or further than one span ahead, as a share of
the history's span (5 h back → 2.5 h ahead); otherwise the axis ends at the reset, the moment that matters."""


def _tick(ts: float, span_s: float) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%H:%M") if span_s <= 86_400 else moment.strftime("%d %b")


def usage_svg(samples: Sequence[Sample], forecast: Forecast, *, now: float, span_s: float, title: str) -> Markup:
    """Used % of `samples` from `now - span_s` to now, then the forecast up to the reset (`FUTURE_SHARE`).

    The forecast line rises at the burn rate, levels at 100 % where the window runs out, and stops at
    the window's reset (a dashed vertical line), after which nothing is predicted.
    """
    start, end = now - span_s, now + span_s * FUTURE_SHARE
    if forecast.reset_at is not None and now < forecast.reset_at <= now + span_s:
        end = forecast.reset_at
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(ts: float) -> float:
        return LEFT + plot_w * (min(max(ts, start), end) - start) / (end - start)

    def y(used: float) -> float:
        return TOP + plot_h * (1 - min(max(used, 0.0), 100.0) / 100)

    out = [f'<svg class="ap-usage-chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
           f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for used in (0, 50, 100):
        out.append(f'<line class="ap-grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(used):.1f}" y2="{y(used):.1f}"/>'
                   f'<text class="ap-axis" x="{LEFT - 3}" y="{y(used) + 3:.1f}" text-anchor="end">{used}%</text>')
    for ts, anchor in ((start, "start"), (now, "middle"), (end, "end")):
        out.append(f'<text class="ap-axis" x="{x(ts):.1f}" y="{HEIGHT - 4}" text-anchor="{anchor}">'
                   f'{escape(_tick(ts, span_s))}</text>')
    out.append(f'<line class="ap-now-line" x1="{x(now):.1f}" x2="{x(now):.1f}" y1="{TOP}" y2="{TOP + plot_h}"/>')
    points = [f"{x(s.at):.1f},{y(s.used_percent):.1f}" for s in samples
              if s.used_percent is not None and s.at >= start]
    if len(points) == 1:
        px, py = points[0].split(",")
        out.append(f'<circle class="ap-usage-dot" cx="{px}" cy="{py}" r="2.5"/>')
    elif points:
        out.append(f'<polyline class="ap-usage-line" points="{" ".join(points)}"/>')
    if forecast.reset_at is not None and now < forecast.reset_at <= end:
        rx = x(forecast.reset_at)
        out.append(f'<line class="ap-reset-line" x1="{rx:.1f}" x2="{rx:.1f}" y1="{TOP}" y2="{TOP + plot_h}">'
                   f'<title>reset</title></line>')
    line = _forecast_points(forecast, now, end)
    if line:
        corners = " ".join(f"{x(t):.1f},{y(u):.1f}" for t, u in line)
        out.append(f'<polyline class="ap-forecast-line" points="{corners}"/>')
    out.append("</svg>")
    return Markup("".join(out))


def _forecast_points(forecast: Forecast, now: float, end: float) -> list[tuple[float, float]]:
    """(time, used %) corners of the forecast line: now → 100 % (if reached) → the reset or the chart's end."""
    if forecast.burn_per_hour is None or forecast.used_now is None or forecast.reset_passed:
        return []
    stop = min(end, forecast.reset_at) if forecast.reset_at is not None else end
    if stop <= now:
        return []
    points = [(now, forecast.used_now)]
    if forecast.exhausts_at is not None and forecast.exhausts_at < stop:
        points.append((forecast.exhausts_at, 100.0))
        points.append((stop, 100.0))
    else:
        points.append((stop, forecast.used_now + forecast.burn_per_hour * (stop - now) / 3600))
    return points

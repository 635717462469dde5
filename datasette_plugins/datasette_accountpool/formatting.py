"""Jinja filters for the dashboard's numbers and times (registered as `ap_*`).

Templates and charts show the same numbers in many places; one spelling of each (a count, a percentage, a
latency, "ago", a UTC time, a duration from `accountpool.human_time`) keeps them consistent with each other and
with the CLI, and keeps formatting logic out of the templates, where it could not be tested.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from accountpool.human_time import duration

DASH = "—"


def num(value: Any) -> str:
    if value is None or value == "":
        return DASH
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def pct(ratio: float | None, digits: int = 1) -> str:
    return DASH if ratio is None else f"{ratio * 100:.{digits}f} %"


def ms(value: float | None) -> str:
    if value is None:
        return DASH
    if value < 1:
        return "<1 ms"
    if value < 1_000:
        return f"{value:.0f} ms"
    if value < 60_000:
        return f"{value / 1000:.2f} s"
    return f"{int(value // 60_000)} min {int(value % 60_000 // 1000)} s"


def ago(ts: float | None, now: float | None = None) -> str:
    """"12 s ago" for the past, "in 5 min" for the future."""
    if ts is None:
        return DASH
    delta = (time.time() if now is None else now) - ts
    return f"{duration(delta)} ago" if delta >= 0 else f"in {duration(delta)}"


def utc(ts: float | None) -> str:
    if ts is None:
        return DASH
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def clock(ts: float | None) -> str:
    return DASH if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def compact_json(value: Any) -> str:
    if value is None:
        return DASH
    if isinstance(value, dict):
        return ", ".join(f"{k}: {json.dumps(v)}" for k, v in value.items())
    return json.dumps(value)


FILTERS = {"ap_num": num, "ap_pct": pct, "ap_ms": ms, "ap_ago": ago, "ap_utc": utc, "ap_clock": clock,
           "ap_json": compact_json, "ap_duration": duration}


def register(env: Any) -> None:
    env.filters.update(FILTERS)

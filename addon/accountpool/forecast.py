"""Quota foresight: burn rate and time to exhaustion of one usage window, from its history (issue 13).

Pure: the caller passes the samples of one account's window (from `usage_samples`, or one synthesized
from the latest observation) and the clock; nothing here reads a file or the time.

Method, and why:
- Only samples of the *current* window count. A reset lies between two samples when the used percent
  drops, when the earlier sample's reset time had passed by the later one, or (windows of known length)
  when the reset time moved by more than `RESET_MOVE_S` (a header's "reset after N s" jitters by a
  second, a new window moves it by hours). Mixing windows would make a reset look like negative use.
- Burn rate (percentage points per hour) is the least-squares slope over those samples, clamped at 0
  (use never goes down inside a window; a negative slope is rounding). Least squares uses every sample,
  so one late or rounded observation moves it less than a first-to-last difference would.
- With a single sample (or samples closer together than `MIN_SPAN_S`) and a window of known length and
  reset time, the rate is the window's average so far: used % ÷ time since the window started. Codex
  windows start at 0 %, so this is what least squares over a full history would give for steady use.
- Otherwise the rate is unknown and so is the exhaustion time: the forecast says so rather than guess.
- `x-ratelimit-*` counters (`requests`, `tokens`) are refilling buckets, not windows: their "reset" is when
  the bucket is full again, seconds away and moving with every answer. For them every sample of the history
  counts (a drop is a refill, not a new window), the rate is the *net* drain (refills included), and there
  is no reset to run out before.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

from accountpool.models import AccountHealth, UsageWindow

WINDOWS = ("primary", "secondary", "requests", "tokens")
"""`usage_samples.window` values: Codex 5-hour and weekly windows, then `x-ratelimit-*` requests / tokens."""
WINDOW_NAMES = {"primary": "5-hour", "secondary": "weekly", "requests": "requests/min", "tokens": "tokens/min"}
BUCKETS = frozenset({"requests", "tokens"})
"""Windows that are continuously refilling buckets (module docstring)."""

MIN_SPAN_S = 60.0
"""Below this between first and last sample, a slope is mostly rounding noise."""
RESET_MOVE_S = 120.0
"""A reset time that moved further than this (window of known length) means a new window began."""
DROP_TOLERANCE = 0.01
"""Percentage points: a smaller drop is rounding, not a reset."""

Method = Literal["least_squares", "window_average", "none"]


@dataclass(frozen=True)
class Sample:
    """One observation of one window (a `usage_samples` row)."""

    at: float
    used_percent: float | None
    reset_at: float | None = None
    window_minutes: int | None = None


@dataclass(frozen=True)
class Forecast:
    """Where one window stands now and where it is heading."""

    window: str
    used_now: float | None
    """Estimated used % now: the last sample plus the burn since, capped at 100; 0 once its reset passed."""
    burn_per_hour: float | None
    """Percentage points per hour; None when history cannot tell."""
    method: Method
    samples: int
    """How many samples of the current window the rate rests on."""
    reset_at: float | None
    exhausts_at: float | None
    """When it reaches 100 % at this rate (now, when already there); None when it never does or unknown."""
    exhausts_before_reset: bool | None
    """None when the reset time or the rate is unknown."""
    projected_at_reset: float | None
    """Used % the rate leads to at the reset, *not* capped at 100 (150 means demand for one and a half windows)."""
    last_sample_at: float | None = None
    bucket: bool = False
    """A refilling `x-ratelimit-*` bucket: no reset to run out before (module docstring)."""
    reset_passed: bool = False
    """The last sample's reset time is behind us: the window restarted and nothing is known about the new one."""

    def headroom_until_reset(self) -> bool:
        """True when the window is known to last until its reset without running out."""
        return self.exhausts_before_reset is False and (self.used_now or 0) < 100


def current_window(samples: Sequence[Sample]) -> list[Sample]:
    """The samples since the last reset, oldest first (unknown percentages dropped)."""
    ordered = sorted((s for s in samples if s.used_percent is not None), key=lambda s: s.at)
    start = 0
    for i in range(1, len(ordered)):
        if is_reset_between(ordered[i - 1], ordered[i]):
            start = i
    return ordered[start:]


def is_reset_between(earlier: Sample, later: Sample) -> bool:
    """Whether a window reset lies between two samples of one window (see the module docstring)."""
    assert earlier.used_percent is not None and later.used_percent is not None
    if later.used_percent < earlier.used_percent - DROP_TOLERANCE:
        return True
    if earlier.reset_at is not None and earlier.reset_at <= later.at:
        return True
    known_length = earlier.window_minutes is not None or later.window_minutes is not None
    return (known_length and earlier.reset_at is not None and later.reset_at is not None
            and abs(later.reset_at - earlier.reset_at) > RESET_MOVE_S)


def least_squares_slope(points: Sequence[tuple[float, float]]) -> float:
    """Slope of the ordinary least-squares line through (x, y) points (x spread must be > 0)."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return sxy / sxx


def _window_average(last: Sample) -> float | None:
    """Percent per second since the window started, when its length and reset time are known."""
    if last.window_minutes is None or last.reset_at is None or last.used_percent is None:
        return None
    started = last.reset_at - last.window_minutes * 60
    elapsed = last.at - started
    if elapsed <= 0 or elapsed > last.window_minutes * 60:
        return None
    return last.used_percent / elapsed


def forecast_window(window: str, samples: Iterable[Sample], now: float) -> Forecast:
    """Burn rate, exhaustion time and projected use at reset of one window (module docstring: method)."""
    if window in BUCKETS:
        return _forecast_bucket(window, samples, now)
    current = current_window(list(samples))
    if not current:
        return Forecast(window, None, None, "none", 0, None, None, None, None)
    last = current[-1]
    assert last.used_percent is not None
    reset_at = last.reset_at
    if reset_at is not None and reset_at <= now:
        return Forecast(window, 0.0, None, "none", 0, reset_at, None, None, None, last.at, reset_passed=True)
    per_s: float | None = None
    method: Method = "none"
    span = last.at - current[0].at
    if len(current) >= 2 and span >= MIN_SPAN_S:
        per_s = max(0.0, least_squares_slope([(s.at - current[0].at, s.used_percent or 0.0) for s in current]))
        method = "least_squares"
    else:
        average = _window_average(last)
        if average is not None:
            per_s, method = max(0.0, average), "window_average"
    return _project(window, last, reset_at, per_s, method, len(current), now)


def _forecast_bucket(window: str, samples: Iterable[Sample], now: float) -> Forecast:
    """Net drain of a refilling bucket over all its samples; it has no reset to run out before."""
    ordered = sorted((replace(s, reset_at=None) for s in samples if s.used_percent is not None), key=lambda s: s.at)
    if not ordered:
        return Forecast(window, None, None, "none", 0, None, None, None, None, bucket=True)
    last = ordered[-1]
    per_s: float | None = None
    method: Method = "none"
    if len(ordered) >= 2 and last.at - ordered[0].at >= MIN_SPAN_S:
        per_s = max(0.0, least_squares_slope([(s.at - ordered[0].at, s.used_percent or 0.0) for s in ordered]))
        method = "least_squares"
    return replace(_project(window, last, None, per_s, method, len(ordered), now), bucket=True)


def _project(window: str, last: Sample, reset_at: float | None, per_s: float | None, method: Method,
             samples: int, now: float) -> Forecast:
    used_last = last.used_percent or 0.0
    if per_s is None:
        used_now = min(100.0, used_last)
        exhausted = used_now >= 100
        return Forecast(window, used_now, None, method, samples, reset_at, now if exhausted else None,
                        True if exhausted and reset_at is not None else None, None, last.at)
    used_now = min(100.0, used_last + per_s * max(0.0, now - last.at))
    if used_now >= 100:
        exhausts_at: float | None = now
    elif per_s > 0:
        exhausts_at = now + (100.0 - used_now) / per_s
    else:
        exhausts_at = None
    before_reset = None if reset_at is None else (exhausts_at is not None and exhausts_at < reset_at)
    projected = None if reset_at is None else used_now + per_s * (reset_at - now)
    return Forecast(window, used_now, per_s * 3600, method, samples, reset_at, exhausts_at, before_reset,
                    projected, last.at)


def scaled(forecast: Forecast, factor: float, now: float) -> Forecast:
    """The same window if its burn rate were `factor` times as high from now on (the "disable X" preview)."""
    if forecast.burn_per_hour is None or forecast.used_now is None or forecast.reset_passed:
        return forecast
    per_s = forecast.burn_per_hour * factor / 3600
    last = Sample(at=now, used_percent=forecast.used_now, reset_at=forecast.reset_at)
    projected = _project(forecast.window, last, forecast.reset_at, per_s, forecast.method, forecast.samples, now)
    return replace(projected, last_sample_at=forecast.last_sample_at, bucket=forecast.bucket)


def samples_from_window(window: UsageWindow, at: float | None) -> list[Sample]:
    """The latest observation of a Codex window as a one-sample history (routing has no other)."""
    if at is None or window.used_percent is None:
        return []
    return [Sample(at, window.used_percent, window.reset_at, window.window_minutes)]


def latest_forecast(health: AccountHealth, window: Literal["primary", "secondary"], now: float) -> Forecast:
    """Forecast from the latest observation alone (window average): what routing can afford per request."""
    return forecast_window(window, samples_from_window(getattr(health, window), health.usage_seen_at), now)


# ---------------------------------------------------------------- redistribution ("what if I disable X")


def redistribution_factors(shares: dict[str, int], removed: str, remaining: Iterable[str]) -> dict[str, float | None]:
    """How much each remaining account's traffic (and so its burn rate) grows when `removed` stops serving.

    `shares` are observed request counts per account (e.g. the last hour). The removed account's requests
    go to the remaining ones in proportion to their own share, which multiplies every remaining rate by
    the same factor. If none of the remaining accounts served anything, the requests are split evenly,
    and the factor is None (unknown): an idle account's percent per request cannot be observed.
    """
    remaining = [a for a in remaining if a != removed]
    moved = shares.get(removed, 0)
    total = sum(shares.get(a, 0) for a in remaining)
    if moved <= 0:
        return {a: 1.0 for a in remaining}
    if total <= 0:
        return {a: None for a in remaining}
    factor = (total + moved) / total
    return {a: factor if shares.get(a, 0) > 0 else 1.0 for a in remaining}


# ---------------------------------------------------------------- words


def _duration(seconds: float) -> str:
    minutes = max(0, round(seconds / 60))
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def clock(ts: float, now: float) -> str:
    """HH:MM UTC, with the date when it is not within the next day."""
    moment = datetime.fromtimestamp(ts, UTC)
    if abs(ts - now) < 86_400:
        return moment.strftime("%H:%M UTC")
    return moment.strftime("%a %d %b %H:%M UTC")


def describe(forecast: Forecast, now: float) -> str:
    """One line a person reads: "exhausts in ~2 h 10 min, before its reset at 14:05 UTC" and the like."""
    if forecast.reset_passed:
        return "its window has reset since the last observation; no forecast yet"
    if forecast.used_now is None:
        return "no usage observed yet"
    if forecast.used_now >= 100:
        tail = f" until its reset at {clock(forecast.reset_at, now)}" if forecast.reset_at else ""
        return f"exhausted{tail}"
    if forecast.burn_per_hour is None:
        return "not enough history for a forecast"
    if forecast.bucket:
        if forecast.exhausts_at is None:
            return "not draining"
        return f"at this net rate it runs dry in ~{_duration(forecast.exhausts_at - now)}"
    reset = f"its reset at {clock(forecast.reset_at, now)}" if forecast.reset_at is not None else None
    if forecast.exhausts_at is None:
        return "not rising: will not run out" + (f" before {reset}" if reset else "")
    eta = f"exhausts in ~{_duration(forecast.exhausts_at - now)}"
    if forecast.exhausts_before_reset:
        return f"{eta}, before {reset}"
    if reset is None:
        return f"{eta} (reset time unknown)"
    projected = forecast.projected_at_reset
    at_reset = f" (~{projected:.0f} % at reset)" if projected is not None and math.isfinite(projected) else ""
    return f"will not run out before {reset}{at_reset}"

"""Usage observations from upstream response headers and the `wham/usage` probe (docs/BEHAVIOUR.md §12).

Every upstream response may carry Codex usage windows (`x-codex-primary-*`, `x-codex-secondary-*`)
and OpenAI rate-limit counters (`x-ratelimit-*`). Routing sorts and filters on them, so they are
read from every response; a malformed value is dropped field by field and never raises, because a
header we cannot read must not fail a request that otherwise succeeded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from accountpool.models import AccountHealth, RateLimitObservation, UsageWindow

CODEX_PREFIXES = {"primary": "x-codex-primary-", "secondary": "x-codex-secondary-"}
"""Header prefixes of the two Codex usage windows (5-hour primary, weekly secondary)."""
RATELIMIT_PREFIX = "x-ratelimit-"

_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_DURATION_FULL = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ms|us|µs|ns|h|m|s))+")


class UsageObservation(BaseModel):
    """What one response (or one `wham/usage` probe) told us about an account's usage."""

    primary: UsageWindow | None = None
    secondary: UsageWindow | None = None
    ratelimit: RateLimitObservation | None = None
    seen_at: float


_DURATIONS: dict[str, float | None] = {}
_DURATIONS_MAX = 512


def parse_duration_s(text: str | None) -> float | None:
    """Seconds in a Go-style duration ("1s", "6m0s", "20ms", "1h2m3.5s"); a bare number is seconds.

    OpenAI's `x-ratelimit-reset-*` headers use Go's `time.Duration` format. None when unreadable.
    Two of them come with every answer and take few distinct values, so results are remembered.
    """
    if not isinstance(text, str):
        return None
    try:
        return _DURATIONS[text]
    except KeyError:
        pass
    if len(_DURATIONS) >= _DURATIONS_MAX:
        _DURATIONS.clear()
    seconds = _DURATIONS[text] = _parse_duration(text)
    return seconds


def _parse_duration(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    number = _finite_float(text)
    if number is not None:
        return number if number >= 0 else None
    if not _DURATION_FULL.fullmatch(text):
        return None
    return sum(float(value) * _DURATION_UNITS[unit] for value, unit in _DURATION_PART.findall(text))


def _finite_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _non_negative_int(value: Any) -> int | None:
    number = _finite_float(value)
    if number is None or number < 0:
        return None
    return int(number)


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    """Header names lower-cased, so any Mapping (plain dict or mitmproxy Headers) works."""
    return {str(k).lower(): v for k, v in headers.items()}


def _window(
    used: Any, minutes: Any, reset_after_s: Any, reset_at: Any, now: float
) -> UsageWindow | None:
    """Build a window from raw values; an explicit reset time wins over a relative one."""
    used_percent = _finite_float(used)
    window_minutes = _non_negative_int(minutes)
    at = _finite_float(reset_at)
    if at is None or at <= 0:
        after = _finite_float(reset_after_s)
        at = now + after if after is not None and after >= 0 else None
    if used_percent is None and window_minutes is None and at is None:
        return None
    return UsageWindow.model_construct(used_percent=used_percent, window_minutes=window_minutes, reset_at=at)


def _codex_window(h: Mapping[str, str], prefix: str, now: float) -> UsageWindow | None:
    return _window(
        h.get(prefix + "used-percent"),
        h.get(prefix + "window-minutes"),
        h.get(prefix + "reset-after-seconds"),
        h.get(prefix + "reset-at"),
        now,
    )


def _ratelimit(h: Mapping[str, str]) -> RateLimitObservation | None:
    p = RATELIMIT_PREFIX
    values = {
        "limit_requests": _non_negative_int(h.get(p + "limit-requests")),
        "remaining_requests": _non_negative_int(h.get(p + "remaining-requests")),
        "reset_requests_s": parse_duration_s(h.get(p + "reset-requests")),
        "limit_tokens": _non_negative_int(h.get(p + "limit-tokens")),
        "remaining_tokens": _non_negative_int(h.get(p + "remaining-tokens")),
        "reset_tokens_s": parse_duration_s(h.get(p + "reset-tokens")),
    }
    # Checked before building the model: this runs for every upstream answer. The values are typed and checked
    # above, so the model is constructed without validating them a second time.
    return RateLimitObservation.model_construct(**values) if any(v is not None for v in values.values()) else None


def parse_usage_headers(headers: Mapping[str, str], now: float) -> UsageObservation | None:
    """Read the Codex usage windows and `x-ratelimit-*` counters of one response.

    None when no usable value is present, so the caller does not overwrite what it knew.
    """
    h = _lowered(headers)
    codex = ratelimit = False
    for k in h:
        if k.startswith("x-codex-"):
            codex = True
        elif k.startswith(RATELIMIT_PREFIX):
            ratelimit = True
    if not codex and not ratelimit:
        return None
    primary = _codex_window(h, CODEX_PREFIXES["primary"], now) if codex else None
    secondary = _codex_window(h, CODEX_PREFIXES["secondary"], now) if codex else None
    limits = _ratelimit(h) if ratelimit else None
    if primary is None and secondary is None and limits is None:
        return None
    return UsageObservation.model_construct(primary=primary, secondary=secondary, ratelimit=limits, seen_at=now)


def carries_windows(headers: Mapping[str, str]) -> bool:
    """Whether an answer reports Codex usage windows; `headers` must match names case-insensitively (aiohttp's
    do). A cheap look before any parse: most answers of API keys carry `x-ratelimit-*` only."""
    return any(name in headers for name in _WINDOW_NAMES)


_WINDOW_NAMES = tuple(prefix + field for prefix in CODEX_PREFIXES.values()
                      for field in ("used-percent", "window-minutes"))


def same_windows(obs: UsageObservation, health: AccountHealth) -> bool:
    """Whether an observation's windows say what the account's health already says: used % and length.

    Their reset times are left out: a relative `reset-after-seconds` gives a new absolute time with every answer."""
    return all(
        new is None or (new.used_percent, new.window_minutes) == (old.used_percent, old.window_minutes)
        for new, old in ((obs.primary, health.primary), (obs.secondary, health.secondary)))


def _wham_window(raw: Any, now: float) -> UsageWindow | None:
    if not isinstance(raw, dict):
        return None
    seconds = _finite_float(raw.get("limit_window_seconds"))
    minutes = seconds / 60 if seconds is not None else raw.get("window_minutes")
    return _window(raw.get("used_percent"), minutes, raw.get("reset_after_seconds"), raw.get("reset_at"), now)


def usage_from_wham(body: dict, now: float) -> UsageObservation:
    """Usage windows from `GET /backend-api/wham/usage` (`rate_limit.primary_window` / `secondary_window`)."""
    rate_limit = body.get("rate_limit") if isinstance(body, dict) else None
    rate_limit = rate_limit if isinstance(rate_limit, dict) else {}
    return UsageObservation(
        primary=_wham_window(rate_limit.get("primary_window"), now),
        secondary=_wham_window(rate_limit.get("secondary_window"), now),
        seen_at=now,
    )

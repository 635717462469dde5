"""The usage history behind forecasts: which observations become `usage_samples` rows, and reading them back.

Written by the metrics writer thread only (never on mitmproxy's event loop), from the `HealthUpdate`s the
router and the usage sweep already submit: no new hook, no new op. Sampled, because a busy proxy sees a
usage header on every answer: per account and window at most one row per `SAMPLE_EVERY_S`, except that a
window reset is written at once (the forecast needs the first sample of each window). Each proxy samples
its own observations; two proxies on one pool write at most one row each per minute, and the primary key
(account, window, observation time) drops a twin of the same observation.

Read by the dashboard and the CLI: one query per window kind, thinned in SQL to about `POINTS` per chart.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from accountpool.forecast import WINDOWS, Forecast, Sample, forecast_window, is_reset_between, latest_forecast
from accountpool.models import AccountHealth

SAMPLE_EVERY_S = 60.0
POINTS = 300


@dataclass(frozen=True)
class HistorySpan:
    """How far back a window's history is read, and how finely (a `usage_samples` row per `step` seconds)."""

    seconds: float
    step: float
    label: str


HISTORY = {
    "primary": HistorySpan(5 * 3600, 60, "last 5 h"),
    "secondary": HistorySpan(7 * 86_400, 7 * 86_400 / POINTS, "last 7 days"),
    "requests": HistorySpan(3600, 60, "last hour"),
    "tokens": HistorySpan(3600, 60, "last hour"),
}


def sample_rows(health: AccountHealth) -> list[dict[str, Any]]:
    """The `usage_samples` rows one health snapshot holds: its Codex windows and its `x-ratelimit-*` counters."""
    rows: list[dict[str, Any]] = []
    if health.usage_seen_at is not None:
        for name, window in (("primary", health.primary), ("secondary", health.secondary)):
            if window.used_percent is not None:
                rows.append({"account_id": health.account_id, "window": name, "at": health.usage_seen_at,
                             "used_percent": window.used_percent, "reset_at": window.reset_at,
                             "window_minutes": window.window_minutes})
    rl, seen = health.ratelimit, health.ratelimit_seen_at
    if seen is not None:
        for name, limit, remaining, reset_s in (
                ("requests", rl.limit_requests, rl.remaining_requests, rl.reset_requests_s),
                ("tokens", rl.limit_tokens, rl.remaining_tokens, rl.reset_tokens_s)):
            if limit and remaining is not None:
                used = max(0.0, min(100.0, 100.0 * (limit - remaining) / limit))
                rows.append({"account_id": health.account_id, "window": name, "at": seen, "used_percent": used,
                             "reset_at": seen + reset_s if reset_s is not None else None, "window_minutes": None})
    return rows


def _sample(row: dict[str, Any]) -> Sample:
    return Sample(row["at"], row["used_percent"], row["reset_at"], row["window_minutes"])


class UsageSampler:
    """Decides which observations are worth a row; lives in the writer thread (not thread-safe by design).

    `propose` picks rows, `accept` records them once their transaction committed, so a batch retried after
    a lock is sampled the same way again.
    """

    def __init__(self, every_s: float = SAMPLE_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[tuple[str, str], dict[str, Any]] = {}

    def propose(self, healths: Iterable[AccountHealth]) -> list[dict[str, Any]]:
        """Rows to write for these snapshots, in submission order (a batch may hold many of one account)."""
        out = []
        chosen: dict[tuple[str, str], dict[str, Any]] = {}
        for health in healths:
            for row in sample_rows(health):
                key = (row["account_id"], row["window"])
                last = chosen.get(key) or self._last.get(key)
                if last is None or self._due(last, row):
                    out.append(row)
                    chosen[key] = row
        return out

    def _due(self, last: dict[str, Any], row: dict[str, Any]) -> bool:
        if row["at"] <= last["at"]:
            return False  # the same (or an older) observation, carried by a later health update
        if row["at"] - last["at"] >= self.every_s:
            return True
        # A reset of a Codex window is written at once; x-ratelimit buckets refill continuously, so for
        # them a "reset" is every few seconds and only the interval counts.
        return row["window_minutes"] is not None and is_reset_between(_sample(last), _sample(row))

    def accept(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self._last[(row["account_id"], row["window"])] = row


# ---------------------------------------------------------------- reading


def load_samples(conn: sqlite3.Connection, now: float,
                 account_ids: Iterable[str] | None = None) -> dict[tuple[str, str], list[Sample]]:
    """(account id, window) → samples, oldest first, over each window's `HISTORY` span, thinned to its step.

    Thinning keeps the newest row of each step (SQLite returns the bare columns of the `max(at)` row).
    """
    wanted = set(account_ids) if account_ids is not None else None
    out: dict[tuple[str, str], list[Sample]] = {}
    for window, span in HISTORY.items():
        for account_id, at, used, reset_at, minutes in conn.execute(
            "SELECT account_id, max(at), used_percent, reset_at, window_minutes FROM usage_samples "
            "WHERE window = ? AND at >= ? GROUP BY account_id, CAST(at / ? AS INTEGER) ORDER BY account_id, 2",
            [window, now - span.seconds, span.step],
        ):
            if wanted is None or account_id in wanted:
                out.setdefault((account_id, window), []).append(Sample(at, used, reset_at, minutes))
    return out


def forecasts(samples: dict[tuple[str, str], list[Sample]], now: float) -> dict[str, dict[str, Forecast]]:
    """account id → window → forecast, for every window with samples."""
    out: dict[str, dict[str, Forecast]] = {}
    for (account_id, window), rows in samples.items():
        out.setdefault(account_id, {})[window] = forecast_window(window, rows, now)
    return out


def request_shares(conn: sqlite3.Connection, since: float) -> dict[str, int]:
    """Requests each account answered since `since` (the `requests` table's `started_at` index)."""
    return {account_id: n for account_id, n in conn.execute(
        "SELECT account_id, count(*) FROM requests WHERE started_at >= ? AND account_id IS NOT NULL "
        "GROUP BY account_id", [since])}


def account_forecasts(samples: dict[tuple[str, str], list[Sample]], healths: dict[str, AccountHealth],
                      now: float) -> dict[str, dict[str, Forecast]]:
    """account id → window → forecast, windows in `WINDOWS` order.

    From the history where there is one; a Codex window without samples (a pool older than the table,
    or a sample pruned away) falls back to the latest observation in `account_health`.
    """
    found = forecasts(samples, now)
    for account_id, health in healths.items():
        mine = found.setdefault(account_id, {})
        for window in ("primary", "secondary"):
            if window not in mine:
                latest = latest_forecast(health, window, now)  # type: ignore[arg-type]
                if latest.used_now is not None:
                    mine[window] = latest
    return {account_id: {w: per[w] for w in WINDOWS if w in per} for account_id, per in found.items() if per}

"""Quota foresight on the accounts page: per-account usage forecasts and the "what if I disable X" preview.

Plain functions over a `sqlite3.Connection` (run via `db.execute_fn`), like `queries`. The arithmetic is
`accountpool.forecast`'s; this module only reads the history and shapes it for the template.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils
from accountpool.forecast import WINDOW_NAMES, Forecast, Sample, describe, redistribution_factors, scaled
from accountpool.models import Account
from accountpool.storage import store, usage_history
from markupsafe import Markup

from .usage_charts import usage_svg

SHARE_WINDOW_S = 3600
"""The preview moves the request share observed over this long (the last hour)."""
CHARTED = ("primary", "secondary")


@dataclass
class WindowView:
    """One usage window of one account, ready for the template."""

    window: str
    name: str
    forecast: Forecast
    words: str
    chart: Markup | None


@dataclass
class PreviewRow:
    """A remaining account in the "what if" preview: its share and how each window's forecast moves."""

    account: Account
    requests: int
    factor: float | None
    windows: list[tuple[str, str, str, bool]] = field(default_factory=list)
    """(window name, forecast now, estimated forecast, newly runs out before its reset)."""


def account_windows(conn: sqlite3.Connection, now: float | None = None) -> dict[str, list[WindowView]]:
    """account id → its windows with forecast, words and (5-hour and weekly) a chart of the history."""
    now = time.time() if now is None else now
    db = sqlite_utils.Database(conn)
    samples = usage_history.load_samples(conn, now)
    forecasts = usage_history.account_forecasts(samples, store.load_health(db, now), now)
    out: dict[str, list[WindowView]] = {}
    for account_id, per_window in forecasts.items():
        views = []
        for window, forecast in per_window.items():
            history: list[Sample] = samples.get((account_id, window), [])
            chart = None
            if window in CHARTED and history:
                span = usage_history.HISTORY[window]
                chart = usage_svg(history, forecast, now=now, span_s=span.seconds,
                                  title=f"{WINDOW_NAMES[window]} window, {span.label}: used % and forecast")
            views.append(WindowView(window, WINDOW_NAMES[window], forecast, describe(forecast, now), chart))
        out[account_id] = views
    return out


def disable_preview(conn: sqlite3.Connection, account_id: str, now: float | None = None) -> dict[str, Any] | None:
    """What the remaining enabled accounts' forecasts become if `account_id` stops serving (an estimate).

    Its requests of the last hour go to the remaining enabled, not auth-blocked accounts in proportion to
    their own share (`forecast.redistribution_factors`); each of their burn rates grows by that factor from
    now on. None when the account does not exist.
    """
    now = time.time() if now is None else now
    db = sqlite_utils.Database(conn)
    try:
        target = store.get_account(db, account_id)
    except store.NotFound:
        return None
    # auth-blocked accounts cannot take traffic until someone re-authorizes them
    remaining = [a for a in store.list_accounts(db) if a.enabled and not a.auth_blocked and a.id != target.id]
    shares = usage_history.request_shares(conn, now - SHARE_WINDOW_S)
    factors = redistribution_factors(shares, target.id, [a.id for a in remaining])
    samples = usage_history.load_samples(conn, now, [a.id for a in remaining])
    forecasts = usage_history.account_forecasts(samples, store.load_health(db, now), now)
    rows = []
    for account in remaining:
        factor = factors.get(account.id)
        row = PreviewRow(account, shares.get(account.id, 0), factor)
        for window, before in forecasts.get(account.id, {}).items():
            if factor is None:
                row.windows.append((WINDOW_NAMES[window], describe(before, now),
                                    "unknown: this account served nothing in the last hour", False))
                continue
            after = scaled(before, factor, now)
            newly = bool(after.exhausts_before_reset) and not before.exhausts_before_reset
            row.windows.append((WINDOW_NAMES[window], describe(before, now), describe(after, now), newly))
        rows.append(row)
    total = sum(shares.values())
    moved = shares.get(target.id, 0)
    return {"account": target, "requests": moved, "total": total,
            "share": moved / total if total else None, "rows": rows,
            "newly_exhausting": sum(w[3] for r in rows for w in r.windows),
            "share_window_label": "last hour"}

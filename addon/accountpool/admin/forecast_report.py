"""`accountpool forecast`: every account's usage windows with burn rate and exhaustion forecast, as rows.

The CLI prints them as a table or JSON; the numbers come from `usage_history` + `forecast` like the
dashboard's, so both say the same thing.
"""

from __future__ import annotations

import time
from typing import Any

import sqlite_utils

from accountpool.forecast import WINDOW_NAMES, describe
from accountpool.storage import store, usage_history


def forecast_rows(db: sqlite_utils.Database, now: float | None = None) -> list[dict[str, Any]]:
    """One row per account and observed window (accounts by label; an account with no usage has no row)."""
    now = time.time() if now is None else now
    accounts = store.list_accounts(db)
    samples = usage_history.load_samples(db.conn, now)
    forecasts = usage_history.account_forecasts(samples, store.load_health(db, now), now)
    rows = []
    for account in accounts:
        for window, f in forecasts.get(account.id, {}).items():
            rows.append({
                "account_id": account.id, "label": account.label, "kind": account.kind.value,
                "enabled": account.enabled, "window": window, "used_percent": f.used_now,
                "burn_percent_per_hour": f.burn_per_hour, "method": f.method, "samples": f.samples,
                "reset_at": f.reset_at, "exhausts_at": f.exhausts_at,
                "exhausts_before_reset": f.exhausts_before_reset, "projected_percent_at_reset": f.projected_at_reset,
                "summary": describe(f, now),
            })
    return rows


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def forecast_table(rows: list[dict[str, Any]]) -> str:
    """Aligned columns for a terminal: account, window, used %, burn %/h, then the forecast in words."""
    if not rows:
        return "no usage observed yet (usage headers arrive with the first answers, or from the usage sweep)"
    header = ("ACCOUNT", "WINDOW", "USED", "BURN/H", "FORECAST")
    table = [header] + [(
        r["label"] + ("" if r["enabled"] else " (disabled)"), WINDOW_NAMES.get(r["window"], r["window"]),
        _num(r["used_percent"], ".1f") + ("" if r["used_percent"] is None else " %"),
        _num(r["burn_percent_per_hour"], ".2f"), r["summary"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
                     for row in table)

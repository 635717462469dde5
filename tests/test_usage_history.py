"""The usage history (issue 13): health updates → sampled `usage_samples` rows, via the real metrics writer
thread on a real SQLite file; pruning with the metrics retention; reading back into forecasts."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from accountpool.models import AccountHealth, RateLimitObservation, UsageWindow
from accountpool.storage import schema, usage_history
from accountpool.storage.metrics_writer import HealthUpdate, MetricsWriter, prune_old_rows

WEEK_MIN = 10_080


def samples(db_path: Path, where: str = "1") -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(f"select account_id, window, at, used_percent, reset_at, window_minutes "
                            f"from usage_samples where {where} order by account_id, window, at").fetchall()
    finally:
        conn.close()


def observed(account_id: str, at: float, primary: float, *, primary_reset: float, weekly: float = 50.0,
             weekly_reset: float | None = None, **kw: Any) -> AccountHealth:
    """A health snapshot as the router makes it after reading usage headers at `at`."""
    return AccountHealth(
        account_id=account_id, last_used_at=at, usage_seen_at=at,
        primary=UsageWindow(used_percent=primary, window_minutes=300, reset_at=primary_reset),
        secondary=UsageWindow(used_percent=weekly, window_minutes=WEEK_MIN,
                              reset_at=weekly_reset if weekly_reset is not None else at + 3 * 86_400),
        **kw)



def test_a_busy_account_gets_one_sample_per_window_and_minute(writer: MetricsWriter, db_path: Path) -> None:
    """300 answers in 5 minutes (one a second, usage creeping up) → 5 rows per window, not 300."""
    t0 = round(time.time()) - 1_000.0  # recent: older rows would be pruned (7-day retention)
    reset = t0 + 3 * 3600
    for i in range(300):
        writer.submit(HealthUpdate(observed("acc_a", t0 + i, 10 + i * 0.01, primary_reset=reset,
                                            weekly_reset=t0 + 86_400)))
    assert writer.flush()
    rows = samples(db_path, "window = 'primary'")
    assert [r[2] - t0 for r in rows] == [0, 60, 120, 180, 240]
    assert [r[3] for r in rows] == pytest.approx([10, 10.6, 11.2, 11.8, 12.4])
    assert all(r[4] == reset and r[5] == 300 for r in rows)
    assert len(samples(db_path, "window = 'secondary'")) == 5
    assert samples(db_path, "window in ('requests', 'tokens')") == []  # a login has no x-ratelimit-*


def test_a_reset_is_written_at_once_and_a_repeated_observation_never(writer: MetricsWriter, db_path: Path) -> None:
    t0 = round(time.time()) - 1_000.0  # recent: older rows would be pruned (7-day retention)
    writer.submit(HealthUpdate(observed("acc_a", t0, 97, primary_reset=t0 + 5)))
    # a cooldown update carries the same observation (same usage_seen_at): no new row
    writer.submit(HealthUpdate(observed("acc_a", t0, 97, primary_reset=t0 + 5, cooldown_until=t0 + 30)))
    writer.submit(HealthUpdate(observed("acc_a", t0 + 10, 1, primary_reset=t0 + 10 + 5 * 3600)))  # new window
    writer.submit(HealthUpdate(observed("acc_a", t0 + 20, 2, primary_reset=t0 + 10 + 5 * 3600)))  # too soon
    assert writer.flush()
    assert [(r[2] - t0, r[3]) for r in samples(db_path, "window = 'primary'")] == [(0, 97), (10, 1)]


def test_ratelimit_counters_become_used_percent(writer: MetricsWriter, db_path: Path) -> None:
    t0 = round(time.time()) - 1_000.0  # recent: older rows would be pruned (7-day retention)
    writer.submit(HealthUpdate(AccountHealth(
        account_id="acc_key", ratelimit_seen_at=t0,
        ratelimit=RateLimitObservation(limit_requests=5000, remaining_requests=4000, reset_requests_s=12.0,
                                       limit_tokens=2_000_000, remaining_tokens=1_500_000))))
    assert writer.flush()
    assert samples(db_path) == [("acc_key", "requests", t0, 20.0, t0 + 12.0, None),
                                ("acc_key", "tokens", t0, 25.0, None, None)]


def test_samples_written_while_locked_are_not_lost(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sampler remembers a row only after its transaction committed: a delayed batch keeps its samples."""
    monkeypatch.setattr(schema, "BUSY_TIMEOUT_MS", 100)
    writer = MetricsWriter(db_path, flush_interval=0.02)
    writer.start()
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        writer.submit(HealthUpdate(observed("acc_a", time.time(), 40, primary_reset=time.time() + 3600)))
        deadline = time.monotonic() + 10
        while writer.lock_retries == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert writer.lock_retries >= 1
    assert writer.flush(timeout=15)
    writer.stop()
    assert len(samples(db_path, "window = 'primary'")) == 1


def test_samples_are_pruned_with_the_metrics_retention(db_path: Path) -> None:
    now = time.time()
    db = schema.connect(db_path)
    try:
        db["usage_samples"].insert_all([
            {"account_id": "acc_a", "window": "secondary", "at": now - age, "used_percent": 5.0}
            for age in (8 * 86_400, 7.5 * 86_400, 6 * 86_400, 60)])
        assert prune_old_rows(db, now - 7 * 86_400) == 2
        assert sorted(round(now - r["at"]) for r in db.query("select at from usage_samples")) == [60, 6 * 86_400]
    finally:
        db.close()
    # ... and by the writer's own periodic prune
    w = MetricsWriter(db_path, flush_interval=0.02, retention_s=lambda: 3_600.0, prune_every_s=0.05)
    w.start()
    try:
        deadline = time.monotonic() + 10
        while len(samples(db_path)) != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [round(now - r[2]) for r in samples(db_path)] == [60]
    finally:
        w.stop()


def test_history_reads_back_into_a_forecast(writer: MetricsWriter, db_path: Path) -> None:
    """Samples written by the thread, read back per window and forecast: 12 %/h on the 5-hour window."""
    now = time.time()
    reset = now + 3 * 3600
    for i in range(7):  # one observation every 10 minutes over the last hour: 20 → 32 %
        writer.submit(HealthUpdate(observed("acc_a", now - 3600 + i * 600, 20 + 2 * i, primary_reset=reset)))
    assert writer.flush()
    conn = sqlite3.connect(db_path)
    try:
        history = usage_history.load_samples(conn, now)
    finally:
        conn.close()
    assert len(history[("acc_a", "primary")]) == 7
    f = usage_history.forecasts(history, now)["acc_a"]["primary"]
    assert f.burn_per_hour == pytest.approx(12.0)
    assert f.exhausts_before_reset is False
    assert f.projected_at_reset == pytest.approx(32 + 36, abs=0.01)

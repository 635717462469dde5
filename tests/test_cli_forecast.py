"""`accountpool forecast [--json]`, run as a subprocess on a real pool with a recorded usage history."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from accountpool.models import AccountHealth, UsageWindow
from accountpool.storage import schema, store
from helpers_pool import assert_clean_error, make_auth_json, run_cli
from test_cli import db, setup_key, setup_login  # noqa: F401 - `db` is a fixture

H = 3600.0


def seed(db_path: Path) -> tuple[str, str]:
    """A login burning its 5-hour window at 12 %/h (20 → 32 % over the last hour, reset in 3 h) and a
    disabled API key whose request bucket was seen twice."""
    login = setup_login(db_path, make_auth_json("acct-cli-fc", email="fc@example.com"))
    key = setup_key(db_path, "key-fc", "sk-cli-forecast-" + "K7j6" * 8)
    now = time.time()
    conn = schema.connect(db_path)
    try:
        store.update_account(conn, login, label="login-fc")
        store.set_enabled(conn, key, False, actor="test")
        conn["usage_samples"].insert_all(
            [{"account_id": login, "window": "primary", "at": now - H + i * 600, "used_percent": 20 + 2 * i,
              "reset_at": now + 3 * H, "window_minutes": 300} for i in range(7)]
            + [{"account_id": key, "window": "requests", "at": now - 120 + i * 60, "used_percent": 10.0 * (i + 1),
                "reset_at": None, "window_minutes": None} for i in range(2)])
        store.save_health(conn, [AccountHealth(account_id=login, usage_seen_at=now - 1, primary=UsageWindow(
            used_percent=32, window_minutes=300, reset_at=now + 3 * H))])
    finally:
        conn.close()
    return login, key


def test_forecast_json_and_table(db: Path) -> None:  # noqa: F811 - the fixture
    login, key = seed(db)
    result = run_cli(db, "forecast", "--json")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    rows = {(r["label"], r["window"]): r for r in json.loads(result.stdout)}
    assert set(rows) == {("login-fc", "primary"), ("key-fc", "requests")}
    p = rows[("login-fc", "primary")]
    assert p["account_id"] == login and p["method"] == "least_squares" and p["samples"] == 7
    assert p["burn_percent_per_hour"] == pytest.approx(12.0)
    assert p["exhausts_before_reset"] is False
    assert p["projected_percent_at_reset"] == pytest.approx(68.0, abs=0.1)
    assert p["summary"].startswith("will not run out before its reset at ")
    r = rows[("key-fc", "requests")]
    assert r["account_id"] == key and r["enabled"] is False
    assert r["reset_at"] is None and r["exhausts_before_reset"] is None
    assert r["burn_percent_per_hour"] == pytest.approx(600.0)  # 10 points a minute
    assert r["summary"] == "at this net rate it runs dry in ~7 min"  # ~30 % by now, 70 points at 10 a minute
    assert not any("sk-cli-forecast" in line for line in result.stdout.splitlines())

    table = run_cli(db, "forecast")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ACCOUNT", "WINDOW", "USED", "BURN/H", "FORECAST"]
    login_line = next(line for line in lines if line.startswith("login-fc"))
    assert "5-hour" in login_line and "12.00" in login_line and "will not run out before its reset" in login_line
    assert any(line.startswith("key-fc (disabled)") and "requests/min" in line for line in lines)


def test_forecast_on_an_empty_pool_and_errors(db: Path, tmp_path: Path) -> None:  # noqa: F811
    empty = run_cli(db, "forecast")
    assert empty.returncode == 0 and empty.stdout.startswith("no usage observed yet")
    assert json.loads(run_cli(db, "forecast", "--json").stdout) == []
    assert_clean_error(run_cli(tmp_path / "missing" / "pool.db", "forecast"), "no pool database at")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    assert_clean_error(run_cli(junk, "forecast", "--json"), "not a usable pool database")

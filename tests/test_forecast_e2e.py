"""Quota foresight end to end without a browser: traffic through a real mitmdump with the addon against the
simulator → usage headers → sampled `usage_samples` rows → `accountpool forecast --json`."""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness import Mitmdump, Pool, wait_until
from helpers_pool import run_cli


def test_proxied_traffic_produces_samples_and_a_forecast(pool_env: Pool, sim: Any) -> None:
    login = pool_env.add_login("login-e2e", "acct-e2e-fc")
    key = pool_env.add_key("key-e2e", "sk-e2e-forecast-" + "M5n4" * 8,
                           usage={"limit_requests": 1000, "remaining_requests": 750})
    # the 5-hour window resets in 1 h, so it started 4 h ago: 40 % used is 10 %/h, 100 % in 6 h, after the reset
    sim.set_usage("acct-e2e-fc", primary_used_percent=40.0, primary_reset_after_seconds=3600)
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        for pinned in ("acct-e2e-fc", key):  # pinned (a login by its upstream id, the key by its id)
            for i in range(10):
                r = client.post("/v1/responses", headers={"chatgpt-account-id": pinned},
                                json={"model": "gpt-5.5", "input": f"hi {i}"})
                assert r.status_code == 200, r.text
                assert r.headers["x-accountpool-account"].startswith("login-e2e" if pinned != key else "key-e2e")
        pool_env.wait_rows("select id from requests", 20)
        rows = wait_until(lambda: (found := pool_env.query(
            "select account_id, window, used_percent from usage_samples order by account_id, window"))
            and len(found) >= 4 and found)
    # 10 answers each within a minute: one sample per account and window, not ten
    assert sorted((r["account_id"], r["window"], r["used_percent"]) for r in rows) == sorted([
        (login, "primary", 40.0), (login, "secondary", 5.0),
        (key, "requests", 25.0), (key, "tokens", pytest.approx(100 * 1_000 / 2_000_000))])

    result = run_cli(pool_env.db_path, "forecast", "--json")
    assert result.returncode == 0, result.stderr
    forecast = {(r["label"], r["window"]): r for r in json.loads(result.stdout)}
    p = forecast[("login-e2e", "primary")]
    assert p["method"] == "window_average" and p["samples"] == 1
    assert p["burn_percent_per_hour"] == pytest.approx(10.0, rel=0.01)
    assert p["exhausts_before_reset"] is False
    assert p["projected_percent_at_reset"] == pytest.approx(50.0, abs=0.5)
    assert forecast[("key-e2e", "requests")]["summary"] == "not enough history for a forecast"

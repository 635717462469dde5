"""The dashboard's side of issue 13: recovery state and streak per account, queued requests and queue waits."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from accountpool.models import AccountHealth
from accountpool.storage import schema, store
from datasette_accountpool import queries
from test_dashboard import actor_cookies, make_ds, post_form

pytestmark = pytest.mark.asyncio

KEYS = {label: f"sk-recovery-{label}-" + "Z9q4" * 6 for label in ("fine", "cool", "half", "trial")}


@pytest.fixture
def recovering(pool_env: Any) -> dict[str, Any]:
    now = time.time()
    ids = {label: pool_env.add_key(label, key) for label, key in KEYS.items()}
    db = schema.connect(pool_env.db_path)
    try:
        store.save_health(db, [
            AccountHealth(account_id=ids["cool"], cooldown_until=now + 600, cooldown_class="rate_limited",
                          recovering=True, failure_streak=3, streak_class="rate_limited", recovery_at=now),
            AccountHealth(account_id=ids["half"], cooldown_until=now - 5, cooldown_class="upstream_error",
                          recovering=True, failure_streak=1, streak_class="upstream_error", recovery_at=now),
            AccountHealth(account_id=ids["trial"], cooldown_until=now - 5, recovering=True, recovery_at=now),
        ])
        db.execute("UPDATE account_health SET trial_until = ?, trial_owner = 'x' WHERE account_id = ?",
                   [now + 20, ids["trial"]])
        waits = [100.0 * i for i in range(1, 21)]  # 20 queued requests: 100 … 2000 ms
        db["requests"].insert_all([{"id": f"q{i}", "started_at": now - 60 + i, "outcome": "ok", "status": 200,
                                    "total_ms": w + 50, "queue_wait_ms": w} for i, w in enumerate(waits)])
        db["requests"].insert_all([{"id": f"n{i}", "started_at": now - 30, "outcome": "ok", "status": 200,
                                    "total_ms": 20.0} for i in range(30)])  # never waited
        db["inflight"].insert_all([{"request_id": f"w{i}", "started_at": now - 2, "updated_at": now, "pid": 1,
                                    "phase": "queued"} for i in range(3)])
    finally:
        db.close()
    return {"pool": pool_env, "ids": ids, "now": now}


def account_article(html: str, account_id: str) -> str:
    match = re.search(rf'<article[^>]*id="account-{account_id}".*?</article>', html, re.S)
    assert match, account_id
    return match.group(0)


async def test_accounts_page_shows_each_state_and_the_streak(recovering: dict[str, Any]) -> None:
    ds = await make_ds(recovering["pool"])
    html = (await ds.client.get("/-/pool/accounts", cookies=actor_cookies(ds))).text
    ids = recovering["ids"]
    assert "healthy" in account_article(html, ids["fine"])
    cool = account_article(html, ids["cool"])
    assert "cooling until" in cool and "streak 3 × rate_limited" in cool
    half = account_article(html, ids["half"])
    assert "half-open" in half and "the next request is its trial" in half
    trial = account_article(html, ids["trial"])
    assert "trial in flight" in trial and "lease until" in trial
    for key in KEYS.values():
        assert key not in html and key[-8:] not in html


async def test_overview_shows_queued_now_and_queue_wait_percentiles(recovering: dict[str, Any]) -> None:
    ds = await make_ds(recovering["pool"])
    html = (await ds.client.get("/-/pool?window=10m", cookies=actor_cookies(ds))).text
    assert re.search(r'id="ap-queued-now">3<', html)
    # Nearest rank over the 20 queued requests only (the 30 that never waited are not zeros in it).
    data = (await ds.client.get("/-/pool.json?window=10m", cookies=actor_cookies(ds))).json()
    queue = data["queue"] if "queue" in data else data["data"]["queue"]
    assert queue == {"waiting_now": 3, "queued": 20, "p50": 1000.0, "p95": 1900.0}


async def test_queue_stats_on_a_database_without_the_column() -> None:
    import sqlite3

    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE inflight (phase TEXT)")
    conn.execute("CREATE TABLE requests (started_at REAL)")
    assert queries.queue_stats(conn, 0) == {"waiting_now": 0, "queued": 0, "p50": None, "p95": None}


async def test_recovery_settings_are_in_the_form_and_validated(recovering: dict[str, Any]) -> None:
    ds = await make_ds(recovering["pool"])
    page = (await ds.client.get("/-/pool/settings", cookies=actor_cookies(ds))).text
    for name in ("cooldown_escalation_factor", "cooldown_max_s", "transient_threshold", "transient_window_s"):
        assert f'name="{name}"' in page
    current = store.load_settings(schema.connect(recovering["pool"].db_path)).model_dump(mode="json")
    form = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in current.items()
            if k != "model_overrides" and not isinstance(v, bool)}
    refused = await post_form(ds, "/-/pool/settings", {**form, "cooldown_escalation_factor": "0.5"})
    assert refused.status_code in (200, 400) and "greater than or equal to 1" in refused.text
    saved = await post_form(ds, "/-/pool/settings", {**form, "transient_threshold": "5"})
    assert saved.status_code == 303
    assert store.load_settings(schema.connect(recovering["pool"].db_path)).transient_threshold == 5

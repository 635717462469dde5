"""The Datasette dashboard (issue 5): pages, permissions, CSRF, forms, refresh-now, no secret anywhere.

Datasette's async test client (no server); the pool is a real `pool.db` + secrets store in tmp_path
with synthetic metrics rows, and the simulated upstream answers "refresh now".
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import time
from typing import Any

import pytest
from accountpool.models import AccountHealth, UsageWindow
from accountpool.storage import schema, store
from datasette.app import Datasette
from datasette_accountpool import config, queries

pytestmark = pytest.mark.asyncio

PAGES = ("/-/pool", "/-/pool?window=10m", "/-/pool?window=24h", "/-/pool/fragment", "/-/pool.json",
         "/-/pool/accounts", "/-/pool/settings")
API_KEY = "sk-dashboard-test-" + "Q7x9" * 8


# ---------------------------------------------------------------- fixtures


ABSORBED = {  # request id → its attempts: (index into account_ids, status, class)
    "req-000": [(0, 429, "rate_limited"), (1, 200, "ok")],
    "req-001": [(1, 502, "upstream_error"), (0, 200, "ok")],
    "req-002": [(1, 401, "auth_expired"), (1, 200, "ok")],  # refreshed, then the same login again
    "req-004": [(0, 429, "quota_exceeded"), (1, 500, "upstream_error"), (0, 200, "ok")],
}


def seed_metrics(db_path: Any, account_ids: list[str], now: float) -> list[dict[str, Any]]:
    """40 requests in the last 10 minutes (every 8th a failure; four more needed failover, `ABSORBED`), two
    older ones, one in flight."""
    rows = []
    for i in range(40):
        failed = i % 8 == 3
        rows.append({
            "id": f"req-{i:03d}", "started_at": now - 500 + i * 10, "finished_at": now - 499 + i * 10,
            "client_key_label": "laptop" if i % 2 else "ci", "method": "POST", "endpoint": "/v1/responses",
            "model": "gpt-5.5" if i % 4 else "gpt-5.5-mini", "stream": i % 2,
            "request_bytes": 1000 + i, "account_id": account_ids[i % len(account_ids)], "attempts": 2 if failed else 1,
            "status": 429 if failed else 200, "outcome": "rate_limited" if failed else "ok",
            "failure_brief": "3 rate_limited; e.g. \"work\": Rate limit reached" if failed else None,
            "total_ms": 10.0 * (i + 1) + 3, "upstream_headers_ms": 5.0 + i, "first_chunk_ms": 7.0 + i,
            "stream_ms": 2.0 * i if i % 2 else None,
            "input_tokens": 1000, "cached_input_tokens": 250 * (i % 3), "output_tokens": 100,
            "reasoning_tokens": 10, "total_tokens": 1100, "session_key": f"s{i % 5}",
        })
    for j, age in enumerate((7_200, 50_000)):  # in the 24 h window only
        rows.append({"id": f"old-{j}", "started_at": now - age, "finished_at": now - age + 1, "method": "POST",
                     "endpoint": "/v1/chat/completions", "model": "gpt-4.1", "account_id": account_ids[0],
                     "attempts": 1, "status": 502, "outcome": "upstream_error", "failure_brief": "upstream 502",
                     "total_ms": 9_000.0})
    db = schema.connect(db_path)
    try:
        db["requests"].insert_all(rows)
        db["attempts"].insert_all([{"request_id": r["id"], "n": 1, "account_id": r["account_id"],
                                    "status": r["status"], "class": r["outcome"], "ms": r["total_ms"],
                                    "refreshed": 0, "started_at": r["started_at"]} for r in rows])
        # Faults that failover absorbed: these requests still ended ok, on a later attempt.
        by_id = {r["id"]: r for r in rows}
        db["attempts"].upsert_all([
            {"request_id": rid, "n": n, "account_id": account_ids[acct % len(account_ids)], "status": status,
             "class": cls, "ms": 5.0, "refreshed": int(cls == "ok" and rid == "req-002"),
             "started_at": by_id[rid]["started_at"] + n / 100}
            for rid, attempts in ABSORBED.items() for n, (acct, status, cls) in enumerate(attempts, 1)],
            pk=("request_id", "n"))
        db["inflight"].insert({"request_id": "live-1", "started_at": now - 3, "updated_at": now - 1, "pid": 1,
                               "client_key_label": "laptop", "method": "POST", "endpoint": "/v1/responses",
                               "model": "gpt-5.5", "stream": 1, "account_id": account_ids[0], "attempts": 1,
                               "phase": "streaming"})
        store.save_health(db, [AccountHealth(
            account_id=account_ids[0], cooldown_until=now + 600, cooldown_reason="Retry-After 600",
            cooldown_class="rate_limited", last_used_at=now - 5,
            primary=UsageWindow(used_percent=42.0, window_minutes=300, reset_at=now + 7_000),
            secondary=UsageWindow(used_percent=77.0, window_minutes=10_080, reset_at=now + 200_000))])
    finally:
        db.close()
    return rows


@pytest.fixture
def seeded(pool_env: Any) -> dict[str, Any]:
    now = time.time()
    key_id = pool_env.add_key("work", API_KEY)
    login_id = pool_env.add_login("chat", "acct-dash-1")
    rows = seed_metrics(pool_env.db_path, [key_id, login_id], now)
    return {"pool": pool_env, "key_id": key_id, "login_id": login_id, "rows": rows, "now": now}


async def make_ds(pool: Any, **plugin_config: Any) -> Datasette:
    cfg = {"secrets_path": str(pool.secrets_path), "oauth_token_url": pool.sim.url + "/oauth/token",
           **plugin_config}
    ds = Datasette([str(pool.db_path)], metadata={"plugins": {config.PLUGIN_NAME: cfg}})
    await ds.invoke_startup()
    return ds


def actor_cookies(ds: Datasette, actor_id: str = "root") -> dict[str, str]:
    return {"ds_actor": ds.sign({"a": {"id": actor_id}}, "actor")}


async def post_form(ds: Datasette, path: str, data: dict[str, str], actor_id: str = "root") -> Any:
    """A browser-like POST: the CSRF cookie from a GET, sent back as cookie and form field."""
    cookies = actor_cookies(ds, actor_id)
    page = await ds.client.get(path, cookies=cookies)
    token = page.cookies.get("ds_csrftoken")
    assert token, "the page set no CSRF cookie"
    return await ds.client.post(path, data={**data, "csrftoken": token},
                                cookies={**cookies, "ds_csrftoken": token})


async def follow(ds: Datasette, response: Any, actor_id: str = "root") -> Any:
    """Follow a 303 the way a browser does, carrying the flash-message cookie along."""
    assert response.status_code == 303, response.text[:500]
    cookies = actor_cookies(ds, actor_id)
    if "ds_messages" in response.cookies:
        cookies["ds_messages"] = response.cookies["ds_messages"]
    return await ds.client.get(response.headers["location"], cookies=cookies)


def audit_rows(pool: Any) -> list[dict[str, Any]]:
    return pool.query("select * from audit_log order by id")


def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p * len(ordered) / 100)) - 1]


# ---------------------------------------------------------------- pages and access


async def test_every_page_renders_for_root_and_is_forbidden_to_anonymous(seeded: dict[str, Any]) -> None:
    ds = await make_ds(seeded["pool"])
    for path in PAGES:
        ok = await ds.client.get(path, cookies=actor_cookies(ds))
        assert ok.status_code == 200, (path, ok.text[:800])
        anonymous = await ds.client.get(path)
        assert anonymous.status_code == 403, path
        stranger = await ds.client.get(path, cookies=actor_cookies(ds, "mallory"))
        assert stranger.status_code == 403, path


async def test_overview_shows_numbers_computed_from_the_rows(seeded: dict[str, Any]) -> None:
    ds = await make_ds(seeded["pool"])
    recent = [r for r in seeded["rows"] if r["started_at"] >= seeded["now"] - 600]
    failures = sum(r["outcome"] != "ok" for r in recent)
    p95 = nearest_rank([r["total_ms"] for r in recent], 95)
    p50 = nearest_rank([r["total_ms"] for r in recent], 50)

    page = await ds.client.get("/-/pool?window=10m", cookies=actor_cookies(ds))
    html = page.text
    assert f'id="ap-requests">{len(recent)}<' in html
    assert f'id="ap-failures">{failures}<' in html
    assert f'id="ap-p95">{p95:.0f} ms<' in html
    assert f'id="ap-p50">{p50:.0f} ms<' in html
    assert "<svg" in html and "ap-bar-req" in html  # the timeline chart, server-rendered
    assert "streaming" in html  # the in-flight request and its phase
    assert "Rate limit reached" in html  # a recent failure's brief
    assert ">work<" in html and ">chat<" in html  # accounts by label
    assert "accountpool.js" in html and 'id="pool-live"' in html  # self-refresh

    data = (await ds.client.get("/-/pool.json?window=10m", cookies=actor_cookies(ds))).json()
    assert data["totals"]["requests"] == len(recent)
    assert data["totals"]["failures"] == failures
    assert data["totals"]["successes"] == len(recent) - failures
    assert data["latency"]["total_ms"]["p95"] == p95
    assert data["latency"]["stream_ms"]["p95"] == nearest_rank(
        [r["stream_ms"] for r in recent if r["stream_ms"] is not None], 95)
    cached = sum(r["cached_input_tokens"] for r in recent)
    assert data["totals"]["cache_hit_rate"] == pytest.approx(cached / sum(r["input_tokens"] for r in recent))
    assert {s["key"]: s["requests"] for s in data["statuses"]} == {"200": len(recent) - failures, "429": failures}
    assert sum(b["requests"] for b in data["timeline"]["buckets"]) == len(recent)
    assert len(data["recent"]) == queries.LIST_N
    assert {r["outcome"] for r in data["recent_failures"]} == {"rate_limited"}

    day = (await ds.client.get("/-/pool.json?window=24h", cookies=actor_cookies(ds))).json()
    assert day["totals"]["requests"] == len(seeded["rows"])
    assert day["totals"]["failures"] == failures + 2

    fragment = await ds.client.get("/-/pool/fragment?window=10m", cookies=actor_cookies(ds))
    assert f'id="ap-failures">{failures}<' in fragment.text and "<html" not in fragment.text


async def test_overview_shows_the_faults_failover_absorbed(seeded: dict[str, Any]) -> None:
    """Failed upstream attempts by class, from `attempts`: how many, how many inside requests that ended ok,
    on which accounts (labels), and how many requests needed more than one attempt."""
    ds = await make_ds(seeded["pool"])
    html = (await ds.client.get("/-/pool?window=10m", cookies=actor_cookies(ds))).text
    assert 'id="ap-absorbed">5<' in html and "4 requests retried" in html
    section = html[html.index('id="ap-attempt-failures"'):]
    section = section[:section.index("</section>")]
    cells = re.findall(r"<th>(\w+)</th><td class=\"ap-n\">(\d+)</td><td class=\"ap-n\">(\d+)</td>\s*<td>([^<]*)</td>",
                       section)
    assert cells == [("rate_limited", "6", "1", "chat, work"), ("upstream_error", "2", "2", "chat"),
                     ("auth_expired", "1", "1", "chat"), ("quota_exceeded", "1", "1", "work")]
    assert '<tr class="ap-bad">' in section  # rate_limited: five of its failures reached the client
    assert seeded["key_id"] not in section and seeded["login_id"] not in section  # labels, not ids

    data = (await ds.client.get("/-/pool.json?window=10m", cookies=actor_cookies(ds))).json()["attempts"]
    assert (data["failed"], data["absorbed"], data["accounts"]) == (10, 5, 2)
    assert (data["retried_requests"], data["retried_ok"], data["complete"]) == (4, 4, True)
    day = (await ds.client.get("/-/pool.json?window=24h", cookies=actor_cookies(ds))).json()["attempts"]
    upstream = next(r for r in day["by_class"] if r["class"] == "upstream_error")
    assert (upstream["attempts"], upstream["absorbed"], upstream["accounts"]) == (4, 2, ["chat", "work"])

    # Over a big window only the latest attempts are read, and the page says from when.
    conn = sqlite3.connect(seeded["pool"].db_path)
    try:
        latest = conn.execute("select started_at from attempts order by started_at desc limit 3").fetchall()
        part = queries.attempt_failures(conn, seeded["now"] - 86_400, {}, row_limit=3)
    finally:
        conn.close()
    assert (part["scanned"], part["complete"], part["since"]) == (3, False, latest[-1][0])


async def test_rollup_agrees_with_the_raw_rows(seeded: dict[str, Any]) -> None:
    """Above RAW_ROW_LIMIT the overview reads the trigger-maintained rollup: same counts, close percentiles."""
    conn = sqlite3.connect(seeded["pool"].db_path)
    for window in queries.WINDOWS.values():
        raw = queries.overview(conn, window, seeded["now"])
        rolled = queries.overview(conn, window, seeded["now"], raw_row_limit=0)
        assert (raw["source"], rolled["source"]) == ("requests", "rollup")
        if window.name == "10m":  # the rollup window starts at a minute boundary: compare where both agree
            continue
        for key in ("requests", "failures", "successes", "input_tokens", "cached_input_tokens", "total_tokens"):
            assert rolled["totals"][key] == raw["totals"][key], (window.name, key)
        assert rolled["top"]["model"] == raw["top"]["model"]
        assert sum(b["requests"] for b in rolled["timeline"]["buckets"]) == raw["totals"]["requests"]
        for p, exact in raw["latency"]["total_ms"].items():
            assert rolled["latency"]["total_ms"][p] == pytest.approx(exact, rel=0.2), (window.name, p)
    # deleting (pruning) rows takes them out of the rollup too
    conn.execute("delete from requests where id like 'old-%'")
    conn.commit()
    day = queries.overview(conn, queries.WINDOWS["24h"], seeded["now"], raw_row_limit=0)
    assert day["totals"]["requests"] == 40
    conn.close()


async def test_menu_links_only_for_viewers(seeded: dict[str, Any]) -> None:
    ds = await make_ds(seeded["pool"])
    as_root = await ds.client.get("/", cookies=actor_cookies(ds))
    assert "/-/pool/accounts" in as_root.text
    as_other = await ds.client.get("/", cookies=actor_cookies(ds, "mallory"))
    assert "/-/pool" not in as_other.text


async def test_plugin_config_allow_blocks_grant_view_and_manage(seeded: dict[str, Any]) -> None:
    ds = await make_ds(seeded["pool"], allow_view={"id": ["alice"]}, allow_manage={"id": "bob"})
    assert (await ds.client.get("/-/pool", cookies=actor_cookies(ds, "alice"))).status_code == 200
    assert (await ds.client.get("/-/pool/accounts", cookies=actor_cookies(ds, "bob"))).status_code == 200
    assert (await ds.client.get("/-/pool", cookies=actor_cookies(ds, "carol"))).status_code == 403
    page = await ds.client.get("/-/pool/accounts", cookies=actor_cookies(ds, "alice"))
    assert 'value="disable"' not in page.text  # a viewer sees no forms
    refused = await post_form(ds, "/-/pool/accounts", {"action": "disable", "account_id": seeded["key_id"]},
                              actor_id="alice")
    assert refused.status_code == 403
    done = await post_form(ds, "/-/pool/accounts", {"action": "disable", "account_id": seeded["key_id"]},
                           actor_id="bob")
    assert done.status_code == 303
    assert audit_rows(seeded["pool"])[-1]["actor"] == "bob"


# ---------------------------------------------------------------- accounts forms


async def test_accounts_page_shows_health(seeded: dict[str, Any]) -> None:
    ds = await make_ds(seeded["pool"])
    html = (await ds.client.get("/-/pool/accounts", cookies=actor_cookies(ds))).text
    assert "cooling down" in html and "Retry-After 600" in html
    assert 'value="42.0"' in html and 'value="77.0"' in html  # 5-hour and weekly usage meters
    work = html[html.index(f'id="account-{seeded["key_id"]}"'):]
    work = work[:work.index("</article>")]
    mine = [r for r in seeded["rows"] if r["account_id"] == seeded["key_id"]]
    assert f'class="ap-req24">{len(mine)}<' in work
    assert f'{sum(r["outcome"] != "ok" for r in mine)}</span> failures' in work
    assert 'value="refresh"' not in work  # API keys have no token to refresh
    assert 'value="refresh"' in html  # the chatgpt account has


async def test_post_without_csrf_token_is_rejected(seeded: dict[str, Any]) -> None:
    ds = await make_ds(seeded["pool"])
    for path, data in (("/-/pool/accounts", {"action": "disable", "account_id": seeded["key_id"]}),
                       ("/-/pool/settings", {"mode": "sequential"})):
        response = await ds.client.post(path, data=data, cookies=actor_cookies(ds))
        assert response.status_code == 403, path
    assert store.get_account(seeded["pool"].db(), seeded["key_id"]).enabled
    assert not seeded["pool"].query("select * from settings")


async def test_toggle_writes_the_account_and_an_audit_row(seeded: dict[str, Any]) -> None:
    pool, ds = seeded["pool"], await make_ds(seeded["pool"])
    before = len(audit_rows(pool))
    response = await post_form(ds, "/-/pool/accounts", {"action": "disable", "account_id": seeded["key_id"]})
    page = await follow(ds, response)
    assert "work: disabled." in page.text
    assert pool.query("select enabled from accounts where id = ?", [seeded["key_id"]])[0]["enabled"] == 0
    audit = audit_rows(pool)
    assert len(audit) == before + 1
    entry = audit[-1]
    assert (entry["actor"], entry["action"], entry["target"]) == ("root", "disable", seeded["key_id"])
    assert json.loads(entry["before"]) == {"enabled": True} and json.loads(entry["after"]) == {"enabled": False}
    overview = await ds.client.get("/-/pool", cookies=actor_cookies(ds))
    assert "disable" in overview.text and "enabled: true → enabled: false" in overview.text

    await follow(ds, await post_form(ds, "/-/pool/accounts", {"action": "enable", "account_id": seeded["key_id"]}))
    assert pool.query("select enabled from accounts where id = ?", [seeded["key_id"]])[0]["enabled"] == 1


async def test_unknown_account_id_is_a_message_not_an_error(seeded: dict[str, Any]) -> None:
    pool, ds = seeded["pool"], await make_ds(seeded["pool"])
    before = (audit_rows(pool), pool.query("select * from accounts order by id"))
    for data in ({"action": "disable", "account_id": "acc_nope"}, {"action": "explode", "account_id": "x"},
                 {"action": "refresh"}):
        page = await follow(ds, await post_form(ds, "/-/pool/accounts", data))
        assert page.status_code == 200
        assert "nothing changed" in page.text
    assert (audit_rows(pool), pool.query("select * from accounts order by id")) == before


async def test_refresh_now_success_then_invalid_grant_blocks(seeded: dict[str, Any]) -> None:
    pool, ds = seeded["pool"], await make_ds(seeded["pool"])
    login = seeded["login_id"]
    page = await follow(ds, await post_form(ds, "/-/pool/accounts", {"action": "refresh", "account_id": login}))
    assert "chat: token refreshed." in page.text
    assert pool.sim.refresh_count("acct-dash-1") == 1

    pool.sim.script("acct-dash-1", [{"kind": "refresh_error", "error": "invalid_grant",
                                     "message": "Refresh token revoked (simulated)."}])
    page = await follow(ds, await post_form(ds, "/-/pool/accounts", {"action": "refresh", "account_id": login}))
    assert "refresh failed permanently" in page.text and "invalid_grant" in page.text
    row = pool.query("select auth_blocked, auth_error from accounts where id = ?", [login])[0]
    assert row["auth_blocked"] == 1 and "invalid_grant" in row["auth_error"]
    page = await ds.client.get("/-/pool/accounts", cookies=actor_cookies(ds))
    assert "auth blocked" in page.text and "Refresh token revoked" in page.text

    page = await follow(ds, await post_form(ds, "/-/pool/accounts", {"action": "clear_block", "account_id": login}))
    assert "authorization block cleared" in page.text
    assert pool.query("select auth_blocked from accounts where id = ?", [login])[0]["auth_blocked"] == 0
    assert audit_rows(pool)[-1]["action"] == "clear_block"


# ---------------------------------------------------------------- settings form


def settings_form(**changes: str) -> dict[str, str]:
    form = {"mode": "balanced", "sequential_threshold": "90", "cooldown_rate_limited_s": "60",
            "cooldown_quota_s": "3600", "cooldown_auth_s": "300", "cooldown_upstream_s": "30",
            "cooldown_model_s": "3600", "retention_days": "7",
            "ov-0-model": "gpt-5.5", "ov-0-context_window": "1050000", "ov-0-auto_compact_token_limit": "650000",
            "ov-1-model": "", "ov-1-context_window": "", "ov-1-auto_compact_token_limit": ""}
    form.update(changes)
    return form


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"ov-0-auto_compact_token_limit": "1060000", "ov-0-context_window": "1000000"},
     "ov-0-auto_compact_token_limit", "must not exceed context_window"),
    ({"ov-0-context_window": "2000000"}, "ov-0-context_window", "less than or equal to 1050000"),
    ({"sequential_threshold": "abc"}, "sequential_threshold", "valid number"),
])
async def test_invalid_settings_are_refused_beside_the_field(seeded: dict[str, Any], changes: dict[str, str],
                                                             field: str, message: str) -> None:
    pool, ds = seeded["pool"], await make_ds(seeded["pool"])
    before = audit_rows(pool)
    response = await post_form(ds, "/-/pool/settings", settings_form(**changes))
    assert response.status_code == 400
    html = response.text
    assert "Settings not saved" in html
    # the error sits in the same form row as the field, and the user's input is kept
    row = re.search(rf'<(div|td) class="[^"]*ap-invalid[^"]*">(?:(?!</(?:div|td)>).)*name="{field}"'
                    r'(?:(?!</(?:div|td)>).)*</(div|td)>', html, re.S)
    assert row and message in row.group(0), html[:4000]
    assert f'value="{next(iter(changes.values()))}"' in html or f'value="{changes[field]}"' in html
    assert not pool.query("select * from settings")
    assert audit_rows(pool) == before
    assert store.load_settings(pool.db()).model_overrides["gpt-5.5"].context_window == 1_050_000


async def test_valid_settings_are_stored_with_an_audit_row(seeded: dict[str, Any]) -> None:
    pool, ds = seeded["pool"], await make_ds(seeded["pool"])
    form = settings_form(mode="sequential", free_first="on", sequential_threshold="75",
                         **{"ov-0-context_window": "1000000", "ov-0-auto_compact_token_limit": "600000",
                            "ov-1-model": "gpt-5.4-mini", "ov-1-context_window": "400000",
                            "ov-1-auto_compact_token_limit": "300000"})
    page = await follow(ds, await post_form(ds, "/-/pool/settings", form))
    assert "Settings saved" in page.text
    saved = store.load_settings(pool.db())
    assert (saved.mode, saved.free_first, saved.sequential_threshold) == ("sequential", True, 75)
    assert saved.model_overrides["gpt-5.5"].context_window == 1_000_000
    assert saved.model_overrides["gpt-5.4-mini"].auto_compact_token_limit == 300_000
    entry = audit_rows(pool)[-1]
    assert (entry["actor"], entry["action"]) == ("root", "settings")
    assert json.loads(entry["after"])["mode"] == "sequential"
    assert 'value="gpt-5.4-mini"' in page.text  # the form shows what is stored

    # remove one override; untick free_first (an unticked checkbox is absent from the POST)
    form = settings_form(mode="sequential", sequential_threshold="75",
                         **{"ov-0-model": "gpt-5.4-mini", "ov-0-context_window": "400000",
                            "ov-0-auto_compact_token_limit": "300000", "ov-0-remove": "1",
                            "ov-1-model": "gpt-5.5", "ov-1-context_window": "1000000",
                            "ov-1-auto_compact_token_limit": "600000"})
    await follow(ds, await post_form(ds, "/-/pool/settings", form))
    saved = store.load_settings(pool.db())
    assert set(saved.model_overrides) == {"gpt-5.5"} and saved.free_first is False


# ---------------------------------------------------------------- secrets and startup safety


async def test_no_secret_in_any_page_or_sql_result(seeded: dict[str, Any]) -> None:
    pool, ds = seeded["pool"], await make_ds(seeded["pool"])
    # rotate the login's tokens once so rotated secrets are covered too
    await follow(ds, await post_form(ds, "/-/pool/accounts", {"action": "refresh", "account_id": seeded["login_id"]}))
    secrets = pool.all_secrets()
    assert API_KEY in secrets and len(secrets) >= 5
    cookies = actor_cookies(ds)
    db_name = pool.db_path.stem
    bodies = [(await ds.client.get(path, cookies=cookies)).text for path in PAGES]
    tables = (await ds.client.get(f"/{db_name}.json", cookies=cookies)).json()["tables"]
    for table in [t["name"] for t in tables]:
        for url in (f"/{db_name}/{table}.json?_shape=array&_size=max",
                    f"/{db_name}.json?sql=select+*+from+[{table}]&_shape=array"):
            response = await ds.client.get(url, cookies=cookies)
            assert response.status_code == 200, url
            bodies.append(response.text)
    everything = "\n".join(bodies)
    assert "acct-dash-1" in everything or "chat" in everything  # the scan did see the accounts
    for secret in secrets:
        assert secret not in everything
        assert secret[-12:] not in everything


async def test_startup_refuses_a_served_secrets_table(tmp_path: Any) -> None:
    pool_db = tmp_path / "pool.db"
    schema.connect(pool_db).close()
    leaked = tmp_path / "leak.db"
    conn = sqlite3.connect(leaked)
    conn.execute("create table secrets (account_id text, api_key text)")
    conn.commit()
    conn.close()
    ds = Datasette([str(pool_db), str(leaked)])
    with pytest.raises(config.SecretsServed, match="leak"):
        await ds.invoke_startup()
    # the pool alone starts fine
    await Datasette([str(pool_db)]).invoke_startup()

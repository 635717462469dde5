"""Quota foresight on the accounts page (issue 13): charts, forecast words and the "what if I disable X"
preview, through Datasette's in-process client on a real pool.db with a recorded usage history."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from accountpool.models import AccountHealth, UsageWindow
from accountpool.storage import schema, store
from test_dashboard import actor_cookies, audit_rows, follow, make_ds, post_form, settings_form

pytestmark = pytest.mark.asyncio

H = 3600.0


def seed_history(pool: Any, now: float, a: str, b: str) -> None:
    """a: 5-hour window 20 → 32 % over the last hour (12 %/h), reset in 3 h, 30 requests in the last hour.
    b: 5-hour window 10 → 16 % (6 %/h), reset in 4 h, 10 requests. c (an API key) served nothing.
    Both weekly windows: 10 % used 3 days into the week (~0.14 %/h), far from running out even at ×4."""
    rows = []
    for account, start, step, reset_in in ((a, 20, 2, 3 * H), (b, 10, 1, 4 * H)):
        for i in range(7):
            rows.append({"account_id": account, "window": "primary", "at": now - H + i * 600,
                         "used_percent": start + step * i, "reset_at": now + reset_in, "window_minutes": 300})
        rows.append({"account_id": account, "window": "secondary", "at": now - 60, "used_percent": 10.0,
                     "reset_at": now + 4 * 86_400, "window_minutes": 10_080})
    requests = [{"id": f"r{i}", "started_at": now - 3000 + i * 60, "account_id": a if i < 30 else b,
                 "outcome": "ok", "status": 200} for i in range(40)]
    requests.append({"id": "old", "started_at": now - 2 * H, "account_id": b, "outcome": "ok", "status": 200})
    db = schema.connect(pool.db_path)
    try:
        db["usage_samples"].insert_all(rows)
        db["requests"].insert_all(requests)
        store.save_health(db, [AccountHealth(
            account_id=account, usage_seen_at=now - 1,
            primary=UsageWindow(used_percent=p, window_minutes=300, reset_at=now + reset_in),
            secondary=UsageWindow(used_percent=10.0, window_minutes=10_080, reset_at=now + 4 * 86_400))
            for account, p, reset_in in ((a, 32.0, 3 * H), (b, 16.0, 4 * H))])
    finally:
        db.close()


@pytest.fixture
def foresight_pool(pool_env: Any) -> dict[str, Any]:
    a = pool_env.add_login("a-login", "acct-fc-a")
    b = pool_env.add_login("b-login", "acct-fc-b")
    c = pool_env.add_key("c-key", "sk-forecast-test-" + "Z9y8" * 8)
    seed_history(pool_env, time.time(), a, b)
    return {"pool": pool_env, "a": a, "b": b, "c": c}


def card(html: str, account_id: str) -> str:
    part = html[html.index(f'id="account-{account_id}"'):]
    return part[:part.index("</article>")]


async def test_accounts_page_shows_chart_and_forecast_in_words(foresight_pool: dict[str, Any]) -> None:
    ds = await make_ds(foresight_pool["pool"])
    html = (await ds.client.get("/-/pool/accounts", cookies=actor_cookies(ds))).text
    a = card(html, foresight_pool["a"])
    # one chart per charted window; 7 samples → a line, plus the forecast line
    assert a.count('<svg class="ap-usage-chart"') == 2
    primary = a[a.index('data-window="primary"'):a.index('data-window="secondary"')]
    assert re.search(r'<polyline class="ap-usage-line" points="(?:[\d.]+,[\d.]+ ){6}[\d.]+,[\d.]+"', primary)
    assert 'class="ap-forecast-line"' in primary and 'class="ap-reset-line"' in primary
    # 12 %/h from 32 %: 68 points take ~5 h 40 min, the reset is in 3 h (at ~68 %)
    assert "(12.0 %/h)" in primary
    assert re.search(r"will not run out before its reset at \d\d:\d\d UTC \(~68 % at reset\)", primary), primary
    # the key has no usage windows: no forecast section at all
    assert "ap-forecast" not in card(html, foresight_pool["c"])
    # the card's Disable button opens the preview (a GET), it does not disable
    assert f'name="preview" value="{foresight_pool["a"]}"' in a and 'value="disable"' not in a


async def test_disable_preview_moves_the_traffic_share(foresight_pool: dict[str, Any]) -> None:
    pool, ds = foresight_pool["pool"], await make_ds(foresight_pool["pool"])
    a = foresight_pool["a"]
    page = await ds.client.get(f"/-/pool/accounts?preview={a}", cookies=actor_cookies(ds))
    assert page.status_code == 200
    html = page.text
    preview = html[html.index('id="ap-preview"'):html.index("</section>")]
    assert "Estimate, not a promise" in preview
    assert re.search(r'a-login answered <span class="ap-preview-moved">30</span> of 40 requests', preview)
    # b served 10 of the remaining 10: it takes all 30, so its traffic (and burn) ×4: 6 → 24 %/h,
    # 84 points left run out in 3 h 30 min, before its reset in 4 h
    b_rows = preview[preview.index(">b-login<"):preview.index(">c-key<")]
    assert ">4.00<" in b_rows
    assert "will not run out before its reset" in b_rows  # now
    assert "exhausts in ~3 h 30 min, before its reset at" in b_rows  # estimated
    assert "1 window would run out before its reset" in preview, preview
    # the API key served nothing: its share stays nothing; the disabled account is not among the rows
    assert ">a-login<" not in preview
    # the confirm button is a CSRF-protected POST of the existing disable action
    assert re.search(r'name="csrftoken" value="[^"]+"', preview) and 'value="disable"' in preview
    assert store.get_account(pool.db(), a).enabled  # looking changed nothing
    done = await follow(ds, await post_form(ds, f"/-/pool/accounts?preview={a}",
                                            {"action": "disable", "account_id": a}))
    assert "a-login: disabled." in done.text
    assert not store.get_account(pool.db(), a).enabled
    assert audit_rows(pool)[-1]["action"] == "disable"
    for secret in pool.all_secrets():  # the preview names accounts by label only
        assert secret not in html and secret[-12:] not in html
    unknown = await ds.client.get("/-/pool/accounts?preview=acc_nope", cookies=actor_cookies(ds))
    assert unknown.status_code == 200 and "No account with id <code>acc_nope</code>" in unknown.text


async def test_preview_is_for_viewers_and_confirming_for_managers(foresight_pool: dict[str, Any]) -> None:
    ds = await make_ds(foresight_pool["pool"], allow_view={"id": "alice"})
    a = foresight_pool["a"]
    assert (await ds.client.get(f"/-/pool/accounts?preview={a}")).status_code == 403
    page = await ds.client.get(f"/-/pool/accounts?preview={a}", cookies=actor_cookies(ds, "alice"))
    assert page.status_code == 200
    assert "Estimate, not a promise" in page.text and "What if disabled?" in page.text
    assert 'value="disable"' not in page.text and "needs the <code>accountpool-manage</code>" in page.text
    refused = await post_form(ds, f"/-/pool/accounts?preview={a}", {"action": "disable", "account_id": a},
                              actor_id="alice")
    assert refused.status_code == 403
    assert store.get_account(foresight_pool["pool"].db(), a).enabled


async def test_prefer_expiring_windows_on_the_settings_form(foresight_pool: dict[str, Any]) -> None:
    pool, ds = foresight_pool["pool"], await make_ds(foresight_pool["pool"])
    page = await ds.client.get("/-/pool/settings", cookies=actor_cookies(ds))
    assert re.search(r'<input type="checkbox" name="prefer_expiring_windows" id="f-prefer_expiring_windows" checked>',
                     page.text)  # on by default
    assert "Prefer expiring weekly quota" in page.text
    await follow(ds, await post_form(ds, "/-/pool/settings", settings_form()))  # unticked: absent from the POST
    assert store.load_settings(pool.db()).prefer_expiring_windows is False
    assert json.loads(audit_rows(pool)[-1]["after"]) == {"prefer_expiring_windows": False}
    await follow(ds, await post_form(ds, "/-/pool/settings", settings_form(prefer_expiring_windows="on")))
    assert store.load_settings(pool.db()).prefer_expiring_windows is True

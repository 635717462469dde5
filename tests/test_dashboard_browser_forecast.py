"""Quota foresight end to end, in a real browser (issue 13): traffic through a real mitmdump with the addon
against the simulator → usage headers → `usage_samples` rows written by the proxy's metrics writer →
forecasts and charts on the accounts page → the "what if I disable X" preview → confirm.

The browser context runs with JavaScript *off*: the preview and its confirmation must work without it.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from harness import CHROMIUM, LAPTOP, Datasette, Mitmdump, Pool
from test_dashboard_browser import browser, shot  # noqa: F401 - `browser` is a fixture

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: install Debian's chromium"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")


def test_forecast_chart_and_disable_preview_without_javascript(pool_env: Pool, sim: Any, browser: Any) -> None:  # noqa: F811
    a = pool_env.add_login("a-login", "acct-br-fc-a")
    b = pool_env.add_login("b-login", "acct-br-fc-b")
    # 5-hour windows reset in 2 h, so they started 3 h ago: a used 30 % (10 %/h), b 10 % (~3.3 %/h)
    sim.set_usage("acct-br-fc-a", primary_used_percent=30.0, primary_reset_after_seconds=2 * 3600)
    sim.set_usage("acct-br-fc-b", primary_used_percent=10.0, primary_reset_after_seconds=2 * 3600)
    with Mitmdump(pool_env) as proxy, Datasette(pool_env) as ds:
        with proxy.client() as client:
            for upstream, n in (("acct-br-fc-a", 3), ("acct-br-fc-b", 3)):
                for i in range(n):  # pinned, so each login serves its share
                    r = client.post("/v1/responses", headers={"chatgpt-account-id": upstream},
                                    json={"model": "gpt-5.5", "input": f"hi {i}"})
                    assert r.status_code == 200, r.text
        pool_env.wait_rows("select id from requests", 6)
        # the proxy wrote the usage history itself: one sample per login and window (sampled per minute)
        rows = pool_env.wait_rows("select account_id, window, used_percent, window_minutes from usage_samples "
                                  "order by account_id, window", 4)
        assert {(r["account_id"], r["window"]): (r["used_percent"], r["window_minutes"]) for r in rows} == {
            (a, "primary"): (30.0, 300), (a, "secondary"): (5.0, 10_080),
            (b, "primary"): (10.0, 300), (b, "secondary"): (5.0, 10_080)}

        context = browser.new_context(viewport=LAPTOP, java_script_enabled=False)
        try:
            page = context.new_page()
            page.goto(ds.sign_in_url)
            page.goto(ds.url + "/-/pool/accounts")
            card = page.locator(f"#account-{a}")
            primary = card.locator('li.ap-forecast[data-window="primary"]')
            # the chart: an SVG with the observed point and the forecast line up to the reset
            sync_api.expect(primary.locator("svg.ap-usage-chart")).to_have_count(1)
            assert primary.locator("svg.ap-usage-chart circle.ap-usage-dot").count() == 1
            assert primary.locator("svg.ap-usage-chart polyline.ap-forecast-line").count() == 1
            assert primary.locator("svg.ap-usage-chart").bounding_box()["width"] > 100  # laid out and visible
            # 30 % at 10 %/h, reset in 2 h: ~50 % at reset
            words = primary.locator(".ap-forecast-words").inner_text()
            assert re.fullmatch(r"will not run out before its reset at \d\d:\d\d UTC \(~50 % at reset\)", words), words
            assert "(10.0 %/h)" in primary.inner_text()
            shot(page, "accounts-forecast")

            # Disable a-login: the button leads to the preview (a plain GET), nothing is disabled yet
            card.get_by_role("button", name="Disable").click()
            assert f"preview={a}" in page.url
            preview = page.locator("#ap-preview")
            sync_api.expect(preview).to_contain_text("Estimate, not a promise")
            sync_api.expect(preview).to_contain_text("a-login answered 3 of 6 requests in the last hour (50 %)")
            b_row = preview.locator("tr", has=page.locator("th", has_text="b-login")).first
            assert b_row.locator("td").nth(1).inner_text() == "2.00"  # b takes all of a's share: ×2
            # b: ~3.3 %/h → ~6.7 %/h from 10 %: ~23 % at its reset instead of ~17 %
            assert "(~17 % at reset)" in b_row.inner_text() and "(~23 % at reset)" in b_row.inner_text()
            assert pool_env.query("select enabled from accounts where id = ?", [a])[0]["enabled"] == 1
            shot(page, "accounts-disable-preview")

            preview.get_by_role("button", name="Confirm: disable a-login").click()
            page.wait_for_url(ds.url + "/-/pool/accounts")
            sync_api.expect(page.locator(".message-info")).to_contain_text("a-login: disabled.")
            assert pool_env.query("select enabled from accounts where id = ?", [a])[0]["enabled"] == 0
        finally:
            context.close()

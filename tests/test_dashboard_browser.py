"""The dashboard in a real browser (issue 5): headless Debian Chromium driven by Playwright.

Real processes: the simulated upstream, `mitmdump` with the addon, `datasette <pool.db> --root`.
The browser signs in with Datasette's root URL, reads the overview, disables an account by
clicking its form and changes model overrides through the settings form; the running mitmdump
picks up each change on its next request. Screenshots go to `test-artifacts/`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
from harness import (
    ARTIFACTS,
    CHROMIUM,
    LAPTOP,
    PHONE,
    Datasette,
    Mitmdump,
    Pool,
    launch_chromium,
    seed_health,
    signed_in_page,
    wait_until,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: install Debian's chromium "
                                                       "(`make browser`, which `make test` runs)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

KEY_A = "sk-browser-first-" + "A1b2" * 6
KEY_B = "sk-browser-second-" + "C3d4" * 6
PAGES = {"overview": "/-/pool", "accounts": "/-/pool/accounts", "settings": "/-/pool/settings"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


@contextlib.contextmanager
def dashboard(pool: Pool, browser: Any) -> Iterator[tuple[Mitmdump, Datasette, Any]]:
    """mitmdump + Datasette on the pool, and a browser page signed in as root (laptop width)."""
    with Mitmdump(pool) as proxy, Datasette(pool) as ds:
        page = signed_in_page(browser, ds)
        try:
            yield proxy, ds, page
        finally:
            page.context.close()


def send(proxy: Mitmdump, n: int, **body: Any) -> list[Any]:
    """`n` Responses requests through the proxy; each must succeed."""
    with proxy.client() as client:
        replies = [client.post("/v1/responses", json={"model": "gpt-5.5", "input": f"hello {i}", **body})
                   for i in range(n)]
    for r in replies:
        assert r.status_code == 200, r.text
    return replies


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def overflow(page: Any) -> dict[str, int]:
    return page.evaluate("""() => ({scroll: document.documentElement.scrollWidth, inner: window.innerWidth,
        wide: [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right
              > window.innerWidth + 1 && !e.closest('.ap-scroll, .ap-chart-wrap')).slice(0, 5)
              .map(e => e.tagName + '.' + e.className)})""")


def test_overview_and_disabling_an_account_in_the_browser(pool_env: Pool, sim: Any, browser: Any) -> None:
    first = pool_env.add_key("a-first", KEY_A)
    second = pool_env.add_key("b-second", KEY_B)
    with dashboard(pool_env, browser) as (proxy, ds, page):
        # Traffic first, so the overview has numbers: all of it served by the first account by label.
        replies = send(proxy, 6)
        assert {r.headers["x-accountpool-account"].split()[0] for r in replies} == {"a-first"}
        assert {q["auth"] for q in sim.requests()} == {f"Bearer {KEY_A}"}
        pool_env.wait_rows("select id from requests", 6)

        page.goto(ds.url + PAGES["overview"])
        assert page.locator("#ap-requests").inner_text().strip() == "6"
        assert page.locator("#ap-failures").inner_text().strip() == "0"
        assert page.locator("#pool-live svg.ap-chart").count() == 1
        assert page.locator("#pool-live svg.ap-chart rect.ap-bar-req").count() >= 2  # legend + at least one bar
        assert page.get_by_role("cell", name="a-first").first.is_visible()  # recent requests name the account
        shot(page, "overview-laptop")

        # Self-refresh: more traffic shows up without a navigation (a marker on `window` survives).
        page.evaluate("() => { window.__apSamePage = true; }")
        send(proxy, 3)
        pool_env.wait_rows("select id from requests", 9)
        page.wait_for_function("() => document.getElementById('ap-requests').textContent.trim() === '9'",
                               timeout=20_000)
        assert page.evaluate("() => window.__apSamePage === true")

        # Disable the serving account by clicking its form.
        page.goto(ds.url + PAGES["accounts"])
        card = page.locator(f"#account-{first}")
        assert card.locator(".ap-req24").inner_text().strip() == "9"
        card.get_by_role("button", name="Disable").click()  # first the "what if" preview, then confirm
        page.locator("#ap-preview").get_by_role("button", name="Confirm: disable a-first").click()
        page.wait_for_url(ds.url + PAGES["accounts"])
        sync_api.expect(page.locator(".message-info")).to_contain_text("a-first: disabled.")
        sync_api.expect(page.locator(f"#account-{first}")).to_have_class(re.compile(r"\bap-disabled\b"))
        sync_api.expect(page.locator(f"#account-{first}").get_by_role("button", name="Enable")).to_be_visible()
        assert pool_env.query("select enabled from accounts where id = ?", [first])[0]["enabled"] == 0
        shot(page, "accounts-laptop")

        # The running mitmdump no longer routes to it; the other account serves.
        seen = len(sim.requests())
        replies = send(proxy, 4)
        assert {r.headers["x-accountpool-account"].split()[0] for r in replies} == {"b-second"}
        assert [q["auth"] for q in sim.requests()[seen:]] == [f"Bearer {KEY_B}"] * 4
        rows = pool_env.wait_rows("select account_id from requests order by started_at", 13)
        assert [r["account_id"] for r in rows[9:]] == [second] * 4
        audit = pool_env.query("select actor, action, target from audit_log where action = 'disable'")
        assert audit == [{"actor": "root", "action": "disable", "target": first}]


def test_model_overrides_from_the_settings_form_reach_the_running_proxy(pool_env: Pool, sim: Any,
                                                                         browser: Any) -> None:
    pool_env.add_key("a-key", KEY_A)  # serves /v1/models
    pool_env.add_login("b-login", "acct-browser-1")  # serves Codex's /backend-api/codex/models

    def catalogs(proxy: Mitmdump) -> tuple[dict[str, dict], dict[str, dict]]:
        with proxy.client() as client:
            api = client.get("/v1/models")
            codex = client.get("/backend-api/codex/models", params={"client_version": "0.1.0"})
        assert api.status_code == 200 and codex.status_code == 200, (api.text, codex.text)
        return {m["id"]: m for m in api.json()["data"]}, {m["slug"]: m for m in codex.json()["models"]}

    def limits(entry: dict) -> tuple[Any, Any, Any]:
        return entry.get("context_window"), entry.get("max_context_window"), entry.get("auto_compact_token_limit")

    with dashboard(pool_env, browser) as (proxy, ds, page):
        pid = proxy.proc.pid
        api, codex = catalogs(proxy)  # the seed's defaults first
        assert limits(api["gpt-5.5"]) == limits(codex["gpt-5.5"]) == (1_050_000, 1_050_000, 650_000)
        assert limits(api["gpt-5.4-mini"]) == (None, None, None)
        assert limits(codex["gpt-5.4-mini"]) == (272_000, 272_000, 200_000)  # the upstream's own values

        page.goto(ds.url + PAGES["settings"])
        models = page.locator('input[name$="-model"]').evaluate_all("els => els.map(e => [e.name, e.value])")
        row = next(name for name, value in models if value == "gpt-5.5").removesuffix("-model")
        page.fill(f'input[name="{row}-context_window"]', "1000000")
        page.fill(f'input[name="{row}-auto_compact_token_limit"]', "700000")
        new = page.locator("tr.ap-new-row")
        new.locator('input[name$="-model"]').fill("gpt-5.4-mini")
        new.locator('input[name$="-context_window"]').fill("400000")
        new.locator('input[name$="-auto_compact_token_limit"]').fill("300000")
        page.get_by_role("button", name="Save settings").click()
        page.wait_for_url(ds.url + PAGES["settings"])
        sync_api.expect(page.locator(".message-info")).to_contain_text("Settings saved")
        sync_api.expect(page.locator('input[value="gpt-5.4-mini"]')).to_have_count(1)
        shot(page, "settings-laptop")

        # The same mitmdump process serves the new limits on its next request.
        api, codex = catalogs(proxy)
        assert proxy.proc.pid == pid and proxy.proc.poll() is None
        for catalog in (api, codex):
            assert limits(catalog["gpt-5.5"]) == (1_000_000, 1_000_000, 700_000)
            assert limits(catalog["gpt-5.4-mini"]) == (400_000, 400_000, 300_000)
        assert pool_env.query("select actor from audit_log where action = 'settings'") == [{"actor": "root"}]

        # An invalid value is refused beside its field, and the proxy keeps the stored limits.
        page.fill(f'input[name="{row}-auto_compact_token_limit"]', "1040000")
        page.get_by_role("button", name="Save settings").click()
        sync_api.expect(page.locator(".message-error")).to_contain_text("Settings not saved")
        sync_api.expect(page.locator("td.ap-invalid .ap-error")).to_contain_text("must not exceed")
        api, _ = catalogs(proxy)
        assert limits(api["gpt-5.5"]) == (1_000_000, 1_000_000, 700_000)


def test_pages_fit_a_phone_screen(pool_env: Pool, sim: Any, browser: Any) -> None:
    """At 390 px nothing widens the page: wide tables and the chart scroll inside their own box."""
    pool_env.add_key("a-team-key-with-a-rather-long-label", KEY_A)
    pool_env.add_key("b-backup", KEY_B)
    login = pool_env.add_login("c-login", "acct-browser-2")
    seed_health(pool_env, login, primary={"used_percent": 62.0, "window_minutes": 300, "reset_at": 4e9},
                secondary={"used_percent": 91.0, "window_minutes": 10_080, "reset_at": 4.1e9})
    for credential in (KEY_A, "acct-browser-2"):  # failovers and cooldowns to show
        sim.script(credential, [{"kind": "rate_limit", "retry_after": 600}])
    with dashboard(pool_env, browser) as (proxy, ds, page):
        send(proxy, 5)
        with proxy.client() as client:
            client.post("/v1/chat/completions", json={"model": "gpt-5.5", "messages": [{"role": "user",
                                                                                        "content": "hi"}]})
        pool_env.wait_rows("select id from requests", 6)
        cooling = wait_until(lambda: pool_env.query("select account_id from account_health where "
                                                    "cooldown_until > unixepoch()"))
        page.set_viewport_size(PHONE)
        for name, path in PAGES.items():
            page.goto(ds.url + path)
            assert page.locator("h1").is_visible()
            sizes = overflow(page)
            shot(page, f"{name}-phone")
            assert sizes["scroll"] <= sizes["inner"], (name, sizes)
        page.set_viewport_size(LAPTOP)
        page.goto(ds.url + PAGES["accounts"])
        for row in cooling:
            assert page.locator(f"#account-{row['account_id']} .ap-badge.ap-warn").inner_text() == "cooling down"
        sizes = overflow(page)
        assert sizes["scroll"] <= sizes["inner"], sizes

"""Security (issue 7 §5), end to end. What other files already prove, and is not repeated here:

- client keys are compared in constant time (every stored hash, no early exit):
  tests/test_store.py::test_match_client_key_compares_every_hash; stored hashed only:
  tests/test_store.py::test_client_keys_stored_hashed
- the failed-attempt windows slide per key and per source: tests/test_client_auth.py
- no client keys on a non-loopback listen address is refused unless `pool_allow_open_listen=true`:
  tests/test_addon_options.py::test_invalid_options_refuse_to_start,
  tests/test_addon_unit.py::test_configure_validates_options
- dashboard forms need Datasette's CSRF token: tests/test_dashboard.py::test_post_without_csrf_token_is_rejected;
  a view-only actor cannot use the account forms:
  tests/test_dashboard.py::test_plugin_config_allow_blocks_grant_view_and_manage
- mitmweb's live views and flow API, `-w` flow files and `--flow-detail` output: tests/test_secret_visibility.py;
  every dashboard page and SQL result: tests/test_dashboard.py::test_no_secret_in_any_page_or_sql_result
- `accountpool export` leaves secrets out unless asked:
  tests/test_cli.py::test_export_without_and_with_secrets
"""

from __future__ import annotations

import httpx
from harness import Mitmdump, fast_cooldowns, find_secrets, scan_run_for_secrets, secret_files, sse_events
from helpers_pool import dump_served_db

KEY_A = "sk-test-alpha-aaaaaaaaaaaaaaaaaaaa"
KEY_B = "sk-test-bravo-bbbbbbbbbbbbbbbbbbbb"
BODY = {"model": "gpt-5.5", "input": "hi"}


def test_wrong_keys_are_throttled_but_a_valid_key_never_is(pool_env, sim):
    """Decision (issue 12): after 10 failures in a minute, further *wrong* keys from that address get 429; the
    right key is always accepted (client keys hold 256 random bits, so a guesser gains nothing from telling a
    hit, and a broken script on 127.0.0.1 must not lock out the other local clients). The throttle is per
    process. tests/test_admission.py shows the stale-key case."""
    pool_env.add_key("a", KEY_A)
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        for i in range(10):
            r = client.post("/v1/responses", json=BODY, headers={"authorization": f"Bearer ap-guess-{i:04d}"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_client_key", r.text
        r = client.post("/v1/responses", json=BODY, headers={"authorization": "Bearer ap-guess-0010"})
        assert r.status_code == 429, r.text
        error = r.json()["error"]
        assert error["code"] == "client_auth_throttled" and error["type"] == "rate_limit_error"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert sim.requests() == []  # nothing reached an upstream
        r = client.post("/v1/responses", json=BODY, headers={"authorization": f"Bearer {pool_env.client_key}"})
        assert r.status_code == 200, r.text
        rows = pool_env.wait_rows("select status, outcome, failure_brief from requests", 12)
        assert sorted(r["status"] for r in rows) == [200] + [401] * 10 + [429]
        assert all(r["outcome"] == "client_auth_failed" for r in rows if r["status"] != 200)
    secrets = [*pool_env.all_secrets(), pool_env.client_key]
    assert find_secrets(proxy.log_text(), secrets) == []
    assert find_secrets(repr(rows), secrets) == []


async def test_settings_form_is_refused_to_a_view_only_actor(pool_env):
    from test_dashboard import actor_cookies, make_ds, post_form

    pool_env.add_key("a", KEY_A)
    ds = await make_ds(pool_env, allow_view={"id": ["viewer"]}, allow_manage={"id": ["manager"]})
    page = await ds.client.get("/-/pool/settings", cookies=actor_cookies(ds, "viewer"))
    assert page.status_code == 200
    refused = await post_form(ds, "/-/pool/settings", {"mode": "sequential"}, actor_id="viewer")
    assert refused.status_code == 403
    assert pool_env.query("select * from settings") == []
    refused = await post_form(ds, "/-/pool/accounts", {"action": "clear_cooldown", "account_id": "x"},
                              actor_id="viewer")
    assert refused.status_code == 403


def test_a_whole_run_leaves_no_secret_in_logs_flows_or_databases(pool_env, sim):
    """The most verbose mitmdump (debug log, flow_detail 4, `-w` flow file) over traffic that touches every
    credential path: failover, a refresh that rotates tokens, a refused refresh, upstream errors that echo the
    key, a bad client key, bad input. Then every file of the run and every table is scanned."""
    pool_env.add_key("a", KEY_A)
    pool_env.add_key("b", KEY_B)
    pool_env.add_login("c-login", "acct-sec")
    fast_cooldowns(pool_env, 1)
    flows = pool_env.dir / "run.mitm"
    proxy = Mitmdump(pool_env, options={"termlog_verbosity": "debug", "flow_detail": 4},
                     extra_args=["-w", str(flows)])
    echo = f"Incorrect API key provided: {KEY_A}"  # an upstream that echoes the key it was sent
    sim.script(KEY_A, [{"kind": "invalid_request", "status": 401, "message": echo},
                       {"kind": "server_error", "message": f"upstream trace: Bearer {KEY_A}"}])
    sim.script("acct-sec", [{"kind": "expired"}, {"kind": "refresh_error", "error": "invalid_grant"}])
    bodies: list[str] = []
    with proxy, proxy.client() as client:
        for stream in (False, True, False):
            r = client.post("/v1/responses", json={**BODY, "stream": stream})
            bodies.append(r.text)
            assert r.status_code == 200, r.text
        # Only the login left: first its refresh is refused, later it refreshes and rotates.
        db = pool_env.db()
        from accountpool.storage import store

        for label in ("a", "b"):
            store.set_enabled(db, store.get_account(db, label).id, False, actor="tests")
        db.close()
        r = client.post("/v1/responses", json={**BODY, "stream": True})
        bodies.append(r.text)
        assert r.status_code == 502 and "invalid_grant" in r.text, r.text
        sim.script("acct-sec", [])
        pool_env.wait_rows("select * from account_health where cooldown_until < strftime('%s', 'now') "
                           "and last_error_class = 'auth_failed'", 1, timeout=5)
        for stream in (True, False):
            r = client.post("/v1/responses", json={**BODY, "stream": stream})
            bodies.append(r.text)
            assert r.status_code == 200, r.text
        assert sim.refresh_count("acct-sec") == 1
        bodies.append(client.post("/v1/responses", json=BODY, headers={"authorization": "Bearer ap-wrong"}).text)
        bodies.append(client.post("/v1/responses", content=b"{oops", headers={"content-type": "application/json"}).text)
        assert sse_events(bodies[-4])[-1][0] == "response.completed"
    secrets = [*pool_env.all_secrets(), pool_env.client_key]
    assert KEY_A in secrets and len(secrets) >= 8  # keys, the login's first and rotated tokens, the client key
    scanned = [p.name for p in secret_files(pool_env.dir)]
    assert "run.mitm" in scanned and "pool.db" in scanned and any(n.endswith(".log") for n in scanned)
    assert scan_run_for_secrets(pool_env.dir, secrets) == {}
    raw, rendered = dump_served_db(pool_env.db_path)
    assert find_secrets(raw, secrets) == [] and find_secrets(rendered, secrets) == []
    assert find_secrets("\n".join(bodies), secrets) == []
    # The scan is not vacuous: the upstream's echo did arrive, masked.
    assert "…aaaa" in rendered or "...aaaa" in rendered


def test_client_key_never_reaches_the_upstream_or_the_log(pool_env, sim):
    pool_env.add_key("a", KEY_A)
    with Mitmdump(pool_env, options={"flow_detail": 4}) as proxy, httpx.Client(base_url=proxy.url,
                                                                                trust_env=False) as client:
        for header, value in (("authorization", f"Bearer {pool_env.client_key}"),
                              ("x-api-key", pool_env.client_key), ("api-key", pool_env.client_key)):
            assert client.post("/v1/responses", json=BODY, headers={header: value}).status_code == 200
    assert len(sim.requests()) == 3
    assert pool_env.client_key not in repr(sim.requests())
    assert pool_env.client_key not in proxy.log_text()

"""Which account serves (docs/BEHAVIOUR.md §7), through a real mitmdump: order, sequential mode, affinity, disabling."""

from __future__ import annotations

import time

from accountpool.models import PoolSettings
from accountpool.storage import store
from harness import Mitmdump, openai_client, seed_health
from helpers_pool import run_cli

KEY_A = "sk-test-alpha-aaaaaaaaaaaaaaaaaaaa"
KEY_B = "sk-test-bravo-bbbbbbbbbbbbbbbbbbbb"


def served_by(response) -> str:
    return response.headers["x-accountpool-account"].split(" (", 1)[0]


def ask(client, **extra) -> str:
    r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi", **extra.pop("body", {})}, **extra)
    assert r.status_code == 200, r.text
    return served_by(r)


def two_logins_a_less_used(pool_env, sim, *, a_reports: float) -> str:
    """Logins a and b, known at 10 % and 20 % weekly use; a's next answer reports `a_reports` %, b's 20 %.
    Returns a's id."""
    a = pool_env.add_login("a", "acct-a")
    b = pool_env.add_login("b", "acct-b")
    seed_health(pool_env, a, secondary={"used_percent": 10.0, "reset_at": time.time() + 86_400})
    seed_health(pool_env, b, secondary={"used_percent": 20.0, "reset_at": time.time() + 86_400})
    sim.set_usage("acct-a", secondary_used_percent=a_reports)
    sim.set_usage("acct-b", secondary_used_percent=20.0)
    return a


def test_paid_before_free(pool_env, sim):
    pool_env.add_key("a-free", KEY_A, plan="free")
    pool_env.add_key("b-paid", KEY_B, plan="paid")
    with Mitmdump(pool_env) as proxy:
        raw = openai_client(proxy).responses.with_raw_response.create(model="gpt-5.5", input="hi")
        assert served_by(raw) == "b-paid"
        # The operator's setting flips it: free first.
        db = pool_env.db()
        store.save_settings(db, PoolSettings(free_first=True), actor="tests")
        db.close()
        with proxy.client() as client:
            assert ask(client) == "a-free"


def test_lower_usage_first_and_usage_headers_update_the_order(pool_env, sim):
    a = two_logins_a_less_used(pool_env, sim, a_reports=35.0)
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        assert ask(client, body={"stream": True}) == "a"  # 10 % < 20 %
        # That answer's x-codex-* headers said 35 %: b is the less used one now.
        assert ask(client, body={"stream": True}) == "b"
        rows = pool_env.wait_rows("select * from account_health where account_id = ? and secondary_used_percent = 35",
                                  1, [a])
        assert rows[0]["primary_used_percent"] == 10.0 and rows[0]["secondary_window_minutes"] == 10_080


def test_sequential_sticks_until_threshold_and_survives_restart(pool_env, sim):
    pool_env.add_login("a", "acct-a")
    pool_env.add_login("b", "acct-b")
    db = pool_env.db()
    store.save_settings(db, PoolSettings(mode="sequential", sequential_threshold=50), actor="tests")
    db.close()
    sim.set_usage("acct-a", primary_used_percent=30.0, secondary_used_percent=5.0)
    sim.set_usage("acct-b", primary_used_percent=20.0, secondary_used_percent=40.0)
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        assert [ask(client) for _ in range(2)] == ["a", "a"]
        # b has been seen now; balanced order would still say a, sequential keeps a anyway.
        sim.set_usage("acct-a", primary_used_percent=49.0)
        assert [ask(client) for _ in range(2)] == ["a", "a"]
        sim.set_usage("acct-a", primary_used_percent=55.0)
        assert ask(client) == "a"  # this answer reports 55 % ≥ 50 %
        assert [ask(client) for _ in range(3)] == ["b", "b", "b"]
        pool_env.wait_rows("select * from pool_state where key = 'sequential_current_account' and value = ?",
                           1, [store.get_account(pool_env.db(), "b").id])
    # While the proxy is down, a's 5-hour window resets: balanced order prefers a again
    # (weekly 5 % vs 40 %), but the current account is b and it is below the threshold.
    a_id = store.get_account(pool_env.db(), "a").id
    seed_health(pool_env, a_id, primary={"used_percent": 0.0, "reset_at": time.time() + 18_000},
                secondary={"used_percent": 5.0, "reset_at": time.time() + 86_400}, usage_seen_at=time.time())
    sim.set_usage("acct-a", primary_used_percent=0.0)
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        assert ask(client) == "b"


def test_affinity_keeps_a_conversation_on_one_account(pool_env, sim):
    two_logins_a_less_used(pool_env, sim, a_reports=50.0)
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        assert ask(client, body={"prompt_cache_key": "conv-1"}) == "a"
        assert ask(client, headers={"session_id": "sess-9"}) == "b"  # a reported 50 % since
        # Each conversation stays where it started; a new one goes to the better account.
        assert ask(client, body={"prompt_cache_key": "conv-1"}) == "a"
        assert ask(client, headers={"session_id": "sess-9"}) == "b"
        assert ask(client, body={"prompt_cache_key": "conv-2"}) == "b"
        sdk = openai_client(proxy)
        raw = sdk.responses.with_raw_response.create(model="gpt-5.5", input="x", prompt_cache_key="conv-1")
        assert served_by(raw) == "a"
        # A conversation whose account is no longer healthy moves on.
        sim.script("acct-a", [{"kind": "rate_limit", "retry_after": 60}])
        assert ask(client, body={"prompt_cache_key": "conv-1"}) == "b"


def test_disabled_account_never_serves_and_cli_disable_applies_to_next_request(pool_env, sim):
    pool_env.add_key("a", KEY_A)
    b = pool_env.add_key("b", KEY_B)
    pool_env.add_key("c", "sk-test-charlie-cccccccccccccccccc")
    db = pool_env.db()
    store.set_enabled(db, b, False, actor="tests")
    db.close()
    sim.script(KEY_A, [{"kind": "server_error", "count": 3}])
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        # a fails three times (the third upstream error within a minute cools it down: transient_threshold),
        # b is disabled: c serves, b never sees a request.
        assert [ask(client, body={"stream": True}) for _ in range(3)] == ["c", "c", "c"]
        assert KEY_B not in {q["credential"] for q in sim.requests()}
        result = run_cli(pool_env.db_path, "disable", "c")
        assert result.returncode == 0, result.stderr
        r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi"})
        assert r.status_code == 503, r.text  # a cools down, b and c are disabled
        assert "disabled" in r.json()["error"]["message"]
        result = run_cli(pool_env.db_path, "enable", "b")
        assert result.returncode == 0, result.stderr
        assert ask(client) == "b"


def test_chatgpt_account_id_pins_a_pool_account(pool_env, sim):
    for label in ("a", "b"):  # equal usage (as the simulator reports it): the label decides
        account_id = pool_env.add_login(label, f"acct-{label}")
        seed_health(pool_env, account_id, primary={"used_percent": 10.0}, secondary={"used_percent": 5.0})
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        assert ask(client, headers={"chatgpt-account-id": "acct-b"}) == "b"
        # A client's own login id that names no pool account does not pin (Codex CLI sends its own).
        assert ask(client, headers={"chatgpt-account-id": "someone-else"}) == "a"
        assert [q["account_header"] for q in sim.requests()] == ["acct-b", "acct-a"]
        # Pinned to an account that cannot serve now: no other account is used instead.
        sim.script("acct-b", [{"kind": "rate_limit", "retry_after": 30}])
        r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi"},
                        headers={"chatgpt-account-id": "acct-b"})
        assert r.status_code == 429
        assert len(sim.requests()) == 3

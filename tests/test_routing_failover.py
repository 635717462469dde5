"""Failover and the aggregated pool errors (docs/BEHAVIOUR.md §8, §10), through a real mitmdump with the addon."""

from __future__ import annotations

import time

import openai
import pytest
from harness import Mitmdump, free_port, openai_client, sse_events, upstream_header_values

KEY_A = "sk-test-alpha-aaaaaaaaaaaaaaaaaaaa"
KEY_B = "sk-test-bravo-bbbbbbbbbbbbbbbbbbbb"
KEY_C = "sk-test-charlie-cccccccccccccccccc"


def test_rate_limited_first_account_fails_over_with_the_sdk(pool_env, sim):
    pool_env.add_key("a", KEY_A)
    b = pool_env.add_key("b", KEY_B)
    sim.script(KEY_A, [{"kind": "rate_limit", "retry_after": 30, "count": 2}])
    with Mitmdump(pool_env) as proxy:
        client = openai_client(proxy)
        raw = client.responses.with_raw_response.create(model="gpt-5.5", input="hello")
        assert raw.headers["x-accountpool-account"] == "b (...bbbb)"
        assert raw.parse().output_text
        # A second request skips the cooling account without trying it again.
        events = list(client.responses.create(model="gpt-5.5", input="hello again", stream=True))
        assert events[-1].type == "response.completed"
        seen = [q["auth"] for q in sim.requests()]
        assert seen == [f"Bearer {KEY_A}", f"Bearer {KEY_B}", f"Bearer {KEY_B}"]
        # The upstream saw the accounts' credentials, never the client key (in any header).
        assert pool_env.client_key not in upstream_header_values(sim)
        assert all("ticket" not in k for q in sim.requests() for k in q["headers"])
        rows = pool_env.wait_rows("select * from requests order by started_at", 2)
        assert [(r["account_id"], r["attempts"], r["outcome"]) for r in rows] == [(b, 2, "ok"), (b, 1, "ok")]
        health = pool_env.query("select cooldown_until, cooldown_class from account_health where account_id != ?",
                                [b])
        assert health[0]["cooldown_class"] == "rate_limited"
        assert 20 < health[0]["cooldown_until"] - time.time() <= 30


def test_all_accounts_limited_answers_429_with_earliest_retry_after(pool_env, sim):
    pool_env.add_key("work", KEY_A)
    pool_env.add_key("home", KEY_B)
    pool_env.add_key("spare", KEY_C)
    sim.script(KEY_A, [{"kind": "rate_limit", "retry_after": 40}])
    sim.script(KEY_B, [{"kind": "rate_limit", "retry_after": 25}])
    sim.script(KEY_C, [{"kind": "quota"}])
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi"})
        assert r.status_code == 429, r.text
        assert 20 <= int(r.headers["retry-after"]) <= 25
        error = r.json()["error"]
        assert error["type"] == "rate_limit_error"
        assert "2 rate_limited" in error["message"] and "1 quota_exceeded" in error["message"]
        assert 'e.g. "' in error["message"]
        for secret in (KEY_A, KEY_B, KEY_C, KEY_A[-8:]):
            assert secret not in r.text
        # Next request: every account is cooling down, nothing is tried, still 429 with the earliest end.
        before = len(sim.requests())
        r2 = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi"})
        assert r2.status_code == 429 and len(sim.requests()) == before
        assert 18 <= int(r2.headers["retry-after"]) <= 25
        message = r2.json()["error"]["message"]
        assert "(2 rate_limited, 1 quota_exceeded)" in message, message
        assert '"work" rate_limited, back in' in message and '"spare" quota_exceeded, back in' in message, message
        assert "try again" not in message.lower()  # the pool's words, not the upstream's stale ones
        # The SDK raises its own RateLimitError for it.
        with pytest.raises(openai.RateLimitError):
            openai_client(proxy).responses.create(model="gpt-5.5", input="hi")


def test_none_enabled_is_503_with_a_reason(pool_env, sim):
    a = pool_env.add_key("only", KEY_A)
    db = pool_env.db()
    from accountpool.storage import store

    store.set_enabled(db, a, False, actor="tests")
    db.close()
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi"})
        assert r.status_code == 503, r.text
        message = r.json()["error"]["message"]
        assert "disabled" in message and '"only"' in message
        assert sim.requests() == []


def test_all_attempts_failing_with_500_is_502(pool_env, sim):
    pool_env.add_key("a", KEY_A)
    pool_env.add_key("b", KEY_B)
    sim.script(KEY_A, [{"kind": "server_error"}])
    sim.script(KEY_B, [{"kind": "server_error", "status": 503}])
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi", "stream": True})
        assert r.status_code == 502, r.text
        assert "2 upstream_error" in r.json()["error"]["message"]
        assert len(sim.requests()) == 2
        row = pool_env.wait_rows("select * from requests", 1)[0]
        assert (row["status"], row["outcome"], row["attempts"]) == (502, "pool_exhausted", 2)


def test_refused_connection_is_skipped(pool_env, sim):
    dead = pool_env.add_key("a-dead", KEY_A, base_url=f"http://127.0.0.1:{free_port()}")
    live = pool_env.add_key("b-live", KEY_B)
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi", "stream": True})
        assert r.status_code == 200, r.text
        assert r.headers["x-accountpool-account"].startswith("b-live")
        assert sse_events(r.text)[-1][0] == "response.completed"
        attempts = pool_env.wait_rows("select * from attempts order by n", 2)
        assert [(a["account_id"], a["class"]) for a in attempts] == [(dead, "upstream_error"), (live, "ok")]


def test_model_restricted_cools_down_only_that_model(pool_env, sim):
    a = pool_env.add_key("a", KEY_A)
    pool_env.add_key("b", KEY_B)
    sim.script(KEY_A, [{"kind": "model_not_found", "model": "gpt-5.5", "count": None}])
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi"})
        assert r.status_code == 200 and r.headers["x-accountpool-account"].startswith("b")
        # The other model still goes to `a` first.
        r = client.post("/v1/responses", json={"model": "gpt-5.4-mini", "input": "hi"})
        assert r.status_code == 200 and r.headers["x-accountpool-account"].startswith("a")
        # And gpt-5.5 skips `a` without trying it.
        r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi"})
        assert r.headers["x-accountpool-account"].startswith("b") and r.headers["x-accountpool-attempts"] == "1"
        assert [q["credential"] for q in sim.requests()] == [KEY_A, KEY_B, KEY_A, KEY_B]
        cooldowns = pool_env.wait_rows("select * from model_cooldowns", 1)
        assert [(c["account_id"], c["model"]) for c in cooldowns] == [(a, "gpt-5.5")]
        health = pool_env.query("select cooldown_until from account_health where account_id = ?", [a])
        assert health[0]["cooldown_until"] is None


def test_invalid_request_is_returned_as_is_without_failover(pool_env, sim):
    pool_env.add_key("a", KEY_A)
    pool_env.add_key("b", KEY_B)
    sim.script(KEY_A, [{"kind": "invalid_request", "status": 422, "message": "bad things", "code": "nope"}])
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi"})
        assert r.status_code == 422
        assert r.json()["error"]["message"] == "bad things"
        assert len(sim.requests()) == 1


def test_a_raising_hook_answers_500_and_forwards_nothing(pool_env, sim):
    pool_env.add_key("a", KEY_A)
    with Mitmdump(pool_env, options={"pool_fault_inject": "request_hook"}) as proxy, proxy.client() as client:
        r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi"})
        assert r.status_code == 500
        error = r.json()["error"]
        assert error["code"] == "accountpool_internal_error" and "not forwarded" in error["message"]
        with pytest.raises(openai.InternalServerError):
            openai_client(proxy).responses.create(model="gpt-5.5", input="hi", stream=True)
        assert sim.requests() == []
        row = pool_env.wait_rows("select * from requests", 1)[0]
        assert row["outcome"] == "internal_error"

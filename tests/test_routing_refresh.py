"""ChatGPT logins: refresh on 401, single-flight, proactive refresh, refresh failures (docs/BEHAVIOUR.md §9)."""

from __future__ import annotations

import asyncio
import time

import httpx
from accountpool.storage.secrets_store import SecretsStore
from harness import Mitmdump, openai_client, sse_events


def stored(pool_env, account_id: str):
    secrets = SecretsStore(pool_env.secrets_path, create=False)
    try:
        return secrets.get(account_id)
    finally:
        secrets.close()


def expire_access_token(sim, upstream_id: str) -> None:
    """The upstream now rejects the current access token as expired (until it is refreshed)."""
    with sim._lock:
        sim._logins[upstream_id].expired = True


def test_401_refreshes_once_and_retries_the_same_account(pool_env, sim):
    a = pool_env.add_login("a", "acct-a")
    pool_env.add_login("b", "acct-b")
    old = stored(pool_env, a)
    sim.script("acct-a", [{"kind": "expired"}])
    with Mitmdump(pool_env) as proxy:
        events = list(openai_client(proxy).responses.create(model="gpt-5.5", input="hi", stream=True))
        assert events[-1].type == "response.completed"
        fresh = sim.current_tokens("acct-a")
        assert sim.refresh_count("acct-a") == 1
        codex = [q for q in sim.requests() if q["path"].startswith("/backend-api/codex/")]
        assert [q["auth"] for q in codex] == [f"Bearer {old.access_token}", f"Bearer {fresh['access_token']}"]
        assert {q["account_header"] for q in codex} == {"acct-a"}
        # The rotated tokens are in the secrets store (the old refresh token is dead upstream).
        now = stored(pool_env, a)
        assert (now.access_token, now.refresh_token, now.id_token) == (
            fresh["access_token"], fresh["refresh_token"], fresh["id_token"])
        assert now.generation > old.generation
        attempts = pool_env.wait_rows("select * from attempts order by n", 2)
        assert [(x["account_id"], x["class"], x["refreshed"]) for x in attempts] == [
            (a, "auth_expired", 0), (a, "ok", 1)]
        # The accounts table knows the new expiry, and the next request needs no refresh.
        with proxy.client() as client:
            r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "again"})
            assert r.status_code == 200 and r.headers["x-accountpool-account"].startswith("a")
        assert sim.refresh_count("acct-a") == 1


def test_twenty_concurrent_requests_with_an_expired_token_refresh_once(pool_env, sim):
    a = pool_env.add_login("a", "acct-a")
    with Mitmdump(pool_env) as proxy:
        expire_access_token(sim, "acct-a")

        async def burst() -> list[httpx.Response]:
            headers = {"authorization": f"Bearer {pool_env.client_key}"}
            async with httpx.AsyncClient(base_url=proxy.url, headers=headers, timeout=30, trust_env=False) as c:
                return await asyncio.gather(*[
                    c.post("/v1/responses", json={"model": "gpt-5.5", "input": f"q{i}", "stream": True})
                    for i in range(20)])

        responses = asyncio.run(burst())
        assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses if r.status_code != 200]
        assert all(sse_events(r.text)[-1][0] == "response.completed" for r in responses)
        assert sim.refresh_count("acct-a") == 1
        assert stored(pool_env, a).refresh_token == sim.current_tokens("acct-a")["refresh_token"]
        rows = pool_env.wait_rows("select * from requests where outcome = 'ok'", 20)
        assert {r["account_id"] for r in rows} == {a}


def test_proactive_refresh_before_expiry(pool_env, sim):
    a = pool_env.add_login("a", "acct-a", access_ttl_s=120)  # inside the default 300 s margin
    with sim._lock:  # tokens issued from now on live an hour
        sim._logins["acct-a"].access_ttl_s = 3600
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi"})
        assert r.status_code == 200, r.text
        assert sim.refresh_count("acct-a") == 1
        codex = [q for q in sim.requests() if q["path"].startswith("/backend-api/codex/")]
        # The first (and only) attempt already carried the new token.
        assert [q["auth"] for q in codex] == [f"Bearer {sim.current_tokens('acct-a')['access_token']}"]
        attempts = pool_env.wait_rows("select * from attempts", 1)
        assert attempts[0]["refreshed"] == 1 and attempts[0]["account_id"] == a
        # The new token is good for an hour: no second refresh.
        for _ in range(2):
            assert client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi"}).status_code == 200
        assert sim.refresh_count("acct-a") == 1
        expires = pool_env.wait_rows("select access_expires_at from accounts where access_expires_at > ?", 1,
                                     [time.time() + 600])
        assert expires


def test_refresh_invalid_grant_fails_over_and_never_blocks(pool_env, sim):
    a = pool_env.add_login("a", "acct-a")
    b = pool_env.add_login("b", "acct-b")
    sim.script("acct-a", [{"kind": "expired"}, {"kind": "refresh_error", "error": "invalid_grant"}])
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi", "stream": True})
        assert r.status_code == 200, r.text
        assert r.headers["x-accountpool-account"].startswith("b")
        attempts = pool_env.wait_rows("select * from attempts order by n", 3)
        assert [(x["account_id"], x["class"]) for x in attempts] == [
            (a, "auth_expired"), (a, "auth_failed"), (b, "ok")]
        accounts = {r["id"]: r for r in pool_env.query("select * from accounts")}
        assert accounts[a]["auth_blocked"] == 0 and accounts[a]["auth_error"] is None
        health = pool_env.wait_rows("select * from account_health where account_id = ? and cooldown_until > 0",
                                    1, [a])
        assert health[0]["cooldown_class"] == "auth_failed"
        assert "invalid_grant" in (health[0]["last_error"] or "")

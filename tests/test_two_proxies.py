"""Two processes, one database (issue 7 §3): a reverse-mode and a regular-mode mitmdump share `pool.db`.

They share cooldowns (a 429 seen by one is respected by the other), usage (usage headers seen by one reorder
the other's choice) and refresh (an expired login hit through both at once is refreshed exactly once: the
rotating refresh token is spent once).
"""

from __future__ import annotations

import threading
import time

import pytest
from accountpool.storage.secrets_store import SecretsStore
from harness import Mitmdump, regular_mode_client, seed_health, sse_events, wait_until

pytestmark = pytest.mark.slow

KEY_A = "sk-test-alpha-aaaaaaaaaaaaaaaaaaaa"
KEY_B = "sk-test-bravo-bbbbbbbbbbbbbbbbbbbb"
REGULAR = {"pool_upstream_hosts": "api.openai.com,chatgpt.com", "connection_strategy": "lazy"}
OPENAI = "https://api.openai.com"
BODY = {"model": "gpt-5.5", "input": "hi"}


class Pair:
    """`reverse` and `regular` proxies on one pool, and a client for each."""

    def __init__(self, pool_env) -> None:
        self.reverse = Mitmdump(pool_env).start()
        self.regular = Mitmdump(pool_env, mode="regular", options=REGULAR).start()
        self.rev_client = self.reverse.client()
        auth = {"authorization": f"Bearer {pool_env.client_key}"}
        self.reg_client = regular_mode_client(self.regular, base_url=OPENAI, headers=auth)

    def close(self) -> None:
        self.rev_client.close()
        self.reg_client.close()
        self.reverse.stop()
        self.regular.stop()


@pytest.fixture
def pair(pool_env):
    pairs: list[Pair] = []

    def start() -> Pair:
        pairs.append(Pair(pool_env))
        return pairs[-1]

    yield start
    for p in pairs:
        p.close()


def test_a_cooldown_seen_by_one_is_respected_by_the_other(pool_env, sim, pair):
    a = pool_env.add_key("a", KEY_A)
    pool_env.add_key("b", KEY_B)
    p = pair()
    sim.script(KEY_A, [{"kind": "rate_limit", "retry_after": 30, "count": None}])
    r = p.rev_client.post("/v1/responses", json=BODY)
    assert r.status_code == 200 and r.headers["x-accountpool-account"].startswith("b")
    assert [q["credential"] for q in sim.requests()] == [KEY_A, KEY_B]
    # The writer flushes the cooldown into pool.db …
    pool_env.wait_rows("select * from account_health where account_id = ? and cooldown_until > ?", 1,
                       [a, time.time() + 20])
    # … and the other process skips `a` without trying it.
    for stream in (False, True):
        r = p.reg_client.post("/v1/responses", json={**BODY, "stream": stream})
        assert r.status_code == 200, r.text
        assert r.headers["x-accountpool-account"].startswith("b") and r.headers["x-accountpool-attempts"] == "1"
    assert [q["credential"] for q in sim.requests()] == [KEY_A, KEY_B, KEY_B, KEY_B]
    # Both processes' rows are in the one database.
    rows = pool_env.wait_rows("select * from requests", 3)
    assert sorted(r["attempts"] for r in rows) == [1, 1, 2]


def test_usage_seen_by_one_reorders_the_other(pool_env, sim, pair):
    one = pool_env.add_login("one", "acct-one")
    two = pool_env.add_login("two", "acct-two")
    # What both proxies know at start: `one` has the lower weekly usage, so it goes first.
    now = time.time()
    seed_health(pool_env, one, usage_seen_at=now - 60,
                primary={"used_percent": 10, "window_minutes": 300, "reset_at": now + 3600},
                secondary={"used_percent": 5, "window_minutes": 10080, "reset_at": now + 86400})
    seed_health(pool_env, two, usage_seen_at=now - 60,
                primary={"used_percent": 30, "window_minutes": 300, "reset_at": now + 3600},
                secondary={"used_percent": 40, "window_minutes": 10080, "reset_at": now + 86400})
    sim.set_usage("acct-two", primary_used_percent=30, secondary_used_percent=40)
    p = pair()
    r = p.reg_client.post("/v1/responses", json=BODY)
    assert r.headers["x-accountpool-account"].startswith("one")
    # The upstream now reports `one` at 80 % of its week; the reverse proxy sees it on its next answer.
    sim.set_usage("acct-one", secondary_used_percent=80)
    r = p.rev_client.post("/v1/responses", json=BODY)
    assert r.headers["x-accountpool-account"].startswith("one")
    pool_env.wait_rows("select * from account_health where account_id = ? and secondary_used_percent = 80", 1, [one])
    # The regular proxy never saw that header, yet now prefers `two` (40 % < 80 %).
    r = p.reg_client.post("/v1/responses", json=BODY)
    assert r.status_code == 200 and r.headers["x-accountpool-account"].startswith("two"), r.headers
    assert r.headers["x-accountpool-attempts"] == "1"


def test_an_expired_login_hit_through_both_is_refreshed_once(pool_env, sim, pair):
    login = pool_env.add_login("login", "acct-shared")
    old_access = sim.current_tokens("acct-shared")["access_token"]
    p = pair()
    # Widen the race: the token endpoint takes 0.5 s to answer, so both processes are waiting on it at once.
    real_oauth = sim._oauth

    def slow_oauth(req, credential):
        time.sleep(0.5)
        return real_oauth(req, credential)

    sim._oauth = slow_oauth
    with sim._lock:
        sim._logins["acct-shared"].expired = True
    results: list[tuple[str, int, str]] = []
    go = threading.Event()

    def send(name: str, client, n: int) -> None:
        go.wait(5)
        r = client.post("/v1/responses", json={**BODY, "input": f"{name} {n}", "stream": True},
                        headers={"x-test-via": name})
        results.append((name, r.status_code, sse_events(r.text)[-1][0] if r.status_code == 200 else r.text))

    threads = [threading.Thread(target=send, args=(name, client, n))
               for n in range(4) for name, client in (("reverse", p.rev_client), ("regular", p.reg_client))]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(60)
    assert sorted(results) == sorted((name, 200, "response.completed") for name in ("reverse", "regular")
                                     for _ in range(4)), results
    # Both processes met the expired token (so both needed a refresh) …
    expired_via = {q["headers"].get("x-test-via") for q in sim.requests() if q["auth"] == f"Bearer {old_access}"}
    assert expired_via == {"reverse", "regular"}
    # … and exactly one refresh happened.
    assert sim.refresh_count("acct-shared") == 1
    oauth = [q for q in sim.requests() if q["path"] == "/oauth/token"]
    assert len(oauth) == 1  # the rotating refresh token was spent once, by one of the two processes
    secrets = SecretsStore(pool_env.secrets_path, create=False)
    try:
        assert secrets.get(login).refresh_token == sim.current_tokens("acct-shared")["refresh_token"]
    finally:
        secrets.close()
    wait_until(lambda: pool_env.query("select count(*) as n from requests where outcome = 'ok'")[0]["n"] == 8)
    assert pool_env.query("select auth_blocked from accounts")[0]["auth_blocked"] == 0

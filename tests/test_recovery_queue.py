"""Issue 13 end to end: waiting for an account instead of a 429, half-open trials, escalation, the threshold.

Real mitmdump processes and the simulator; counts are taken at the simulator (what reached each account).
"""

from __future__ import annotations

import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from accountpool.storage import store
from harness import Mitmdump, seed_health, sse_events, wait_until

pytestmark = pytest.mark.slow

KEY_A = "sk-test-alpha-aaaaaaaaaaaaaaaaaaaa"
KEY_B = "sk-test-bravo-bbbbbbbbbbbbbbbbbbbb"
BODY = {"model": "gpt-5.5", "input": "hi"}


def cool_all(pool_env, account_ids: list[str], seconds: float) -> float:
    """Every account rate-limited (cooling, recovering) for `seconds` from now, as if a 429 had been seen."""
    until = time.time() + seconds
    for account_id in account_ids:
        seed_health(pool_env, account_id, cooldown_until=until, cooldown_class="rate_limited",
                    cooldown_reason="Rate limit reached (seeded)", recovering=True, recovery_at=time.time())
    return until


def client(proxy: Mitmdump, timeout: float) -> httpx.Client:
    return httpx.Client(base_url=proxy.url, headers={"authorization": f"Bearer {proxy.pool.client_key}"},
                        timeout=timeout, trust_env=False)


def post(proxy: Mitmdump, stream: bool, n: int, timeout: float = 60) -> tuple[int, dict[str, str], str]:
    with client(proxy, timeout) as c:
        r = c.post("/v1/responses", json={**BODY, "input": f"client {n}", "stream": stream})
        return r.status_code, dict(r.headers), r.text


def test_fifty_clients_wait_out_a_pool_wide_rate_limit(pool_env, sim):
    a = pool_env.add_key("a", KEY_A)
    b = pool_env.add_key("b", KEY_B)
    with Mitmdump(pool_env, options={"pool_max_wait": 20}) as proxy:
        until = cool_all(pool_env, [a, b], 3)
        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(lambda n: post(proxy, n % 2 == 0, n), range(50)))
        finished = time.time()
        assert [status for status, _, _ in results] == [200] * 50, [r for r in results if r[0] != 200][:2]
        for _, headers, text in results:
            if headers.get("content-type", "").startswith("text/event-stream"):
                assert sse_events(text)[-1][0] == "response.completed"
        # Nothing reached the upstream before the cooldown ended.
        assert min(q["at"] for q in sim.requests()) >= until - 0.05
        assert finished >= until
        rows = pool_env.wait_rows("select * from requests where outcome = 'ok'", 50)
        assert len(rows) == 50
        # Every row records its wait (they all arrived during the 3 s cooldown; generous lower bound).
        waits = [r["queue_wait_ms"] for r in rows]
        assert all(w is not None and w > 500 for w in waits), waits
        assert {r["stream"] for r in rows} == {0, 1}


def test_with_waiting_off_the_same_clients_get_429_with_retry_after(pool_env, sim):
    a = pool_env.add_key("a", KEY_A)
    b = pool_env.add_key("b", KEY_B)
    with Mitmdump(pool_env, options={"pool_max_wait": 0}) as proxy:
        cool_all(pool_env, [a, b], 30)
        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(lambda n: post(proxy, n % 2 == 0, n), range(10)))
        assert [status for status, _, _ in results] == [429] * 10
        assert all(20 <= int(h["retry-after"]) <= 30 for _, h, _ in results)
        assert sim.requests() == []
        rows = pool_env.wait_rows("select * from requests", 10)
        assert {r["outcome"] for r in rows} == {"pool_exhausted"}
        assert {r["queue_wait_ms"] for r in rows} == {None}


def test_beyond_the_queue_bound_the_error_comes_at_once(pool_env, sim):
    a = pool_env.add_key("a", KEY_A)
    with Mitmdump(pool_env, options={"pool_max_wait": 20, "pool_max_waiting": 1}) as proxy:
        cool_all(pool_env, [a], 4)
        first: list = []
        waiter = threading.Thread(target=lambda: first.append(post(proxy, True, 1)))
        waiter.start()
        wait_until(lambda: pool_env.query("select 1 from inflight where phase = 'queued'"))
        status, headers, text = post(proxy, False, 2)
        # The queue holds one request already: the second gets the aggregated 429 while the first still waits.
        assert status == 429 and int(headers["retry-after"]) >= 1, text
        assert "rate_limited" in text and not first
        waiter.join(30)
        assert first[0][0] == 200
        assert len(sim.requests()) == 1


def test_a_waiting_request_further_than_the_limit_fails_at_once(pool_env, sim):
    a = pool_env.add_key("a", KEY_A)
    with Mitmdump(pool_env, options={"pool_max_wait": 2}) as proxy:
        cool_all(pool_env, [a], 30)
        started = time.monotonic()
        status, headers, _ = post(proxy, False, 1)
        assert status == 429 and 20 <= int(headers["retry-after"]) <= 30
        assert time.monotonic() - started < 2  # it did not wait the 2 s it was allowed: 30 s is beyond them
        rows = pool_env.wait_rows("select * from requests", 1)
        assert rows[0]["queue_wait_ms"] is None


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("mode", ["reverse", "regular"])
def test_a_client_that_leaves_while_queued_consumes_nothing(pool_env, sim, stream, mode):
    a = pool_env.add_key("a", KEY_A)
    options = {"pool_max_wait": 20, "pool_max_waiting": 1}
    if mode == "regular":
        options["pool_upstream_hosts"] = "api.openai.com"
    with Mitmdump(pool_env, mode=None if mode == "reverse" else "regular", options=options) as proxy:
        def mode_client(timeout: float) -> httpx.Client:
            if mode == "reverse":
                return client(proxy, timeout)
            ca = ssl.create_default_context(cafile=str(proxy.confdir / "mitmproxy-ca-cert.pem"))
            return httpx.Client(base_url="https://api.openai.com", proxy=proxy.url, verify=ca, trust_env=False,
                                timeout=timeout, headers={"authorization": f"Bearer {pool_env.client_key}"})

        until = cool_all(pool_env, [a], 4)
        with pytest.raises(httpx.ReadTimeout), mode_client(1) as c:
            c.post("/v1/responses", json={**BODY, "stream": stream})
        # The disconnected request leaves the queue and is recorded without an attempt …
        rows = pool_env.wait_rows("select * from requests where outcome = 'client_gone'", 1)
        assert rows and rows[0]["attempts"] == 0 and rows[0]["queue_wait_ms"] > 0
        assert time.time() < until  # … before the cooldown ended: it left because the client went away
        # … so its place is free: the next request waits (a full queue would refuse it) and is served.
        with mode_client(60) as c:
            assert c.post("/v1/responses", json={**BODY, "stream": stream}).status_code == 200
        assert len(sim.requests()) == 1


def seed_half_open(pool_env, account_id: str) -> None:
    """`account_id`'s cooldown has just ended: it is half-open and needs one trial."""
    seed_health(pool_env, account_id, cooldown_until=time.time() - 0.1, cooldown_class="rate_limited",
                recovering=True, failure_streak=1, streak_class="rate_limited", recovery_at=time.time())


def fire(proxies: list[Mitmdump], n: int) -> list[int]:
    go = threading.Event()

    def one(i: int) -> int:
        go.wait(5)
        return post(proxies[i % len(proxies)], i % 2 == 0, i)[0]

    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        go.set()
        return [f.result() for f in futures]


def test_half_open_sends_exactly_one_trial_until_it_succeeds(pool_env, sim):
    a = pool_env.add_key("a", KEY_A)  # first by label: without half-open every request would go here
    pool_env.add_key("b", KEY_B)
    with Mitmdump(pool_env) as proxy:
        seed_half_open(pool_env, a)
        sim.script(KEY_A, [{"kind": "slow_first_byte", "delay_s": 1.5, "count": 1}])  # the trial takes a while
        assert fire([proxy], 20) == [200] * 20
        assert [q["credential"] for q in sim.requests()].count(KEY_A) == 1
        # The trial succeeded: `a` is healthy again and takes the next request.
        wait_until(lambda: pool_env.query("select recovering, failure_streak, trial_until from account_health "
                                          "where account_id = ? and recovering = 0", [a]))
        r = post(proxy, False, 99)
        assert r[0] == 200 and r[1]["x-accountpool-account"].startswith("a")


def test_the_half_open_trial_goes_to_the_request_that_waited_longest(pool_env, sim):
    """Eight clients arrive 0.15 s apart while the only account cools down; when it turns half-open, the
    trial is the first client's request (before, whichever waiter's timer the loop ran first took it)."""
    a = pool_env.add_key("a", KEY_A)
    with Mitmdump(pool_env, options={"pool_max_wait": 20}) as proxy:
        until = cool_all(pool_env, [a], 2.5)
        results: dict[int, int] = {}
        threads = []
        for n in range(8):
            t = threading.Thread(target=lambda n=n: results.__setitem__(n, post(proxy, n % 2 == 1, n)[0]))
            t.start()
            threads.append(t)
            time.sleep(0.15)
        for t in threads:
            t.join(60)
        assert results == {n: 200 for n in range(8)}
        arrived = sorted(sim.requests(), key=lambda q: q["at"])
        assert arrived[0]["at"] >= until - 0.05
        assert arrived[0]["body"]["input"] == "client 0", [q["body"]["input"] for q in arrived]
        assert len(arrived) == 8  # one trial, then everyone once; nobody failed over or retried


def test_two_proxies_on_one_pool_send_one_trial_between_them(pool_env, sim):
    a = pool_env.add_key("a", KEY_A)
    pool_env.add_key("b", KEY_B)
    with Mitmdump(pool_env) as one, Mitmdump(pool_env) as two:
        seed_half_open(pool_env, a)
        sim.script(KEY_A, [{"kind": "slow_first_byte", "delay_s": 1.5, "count": 1}])
        assert fire([one, two], 20) == [200] * 20
        trial = [q for q in sim.requests() if q["credential"] == KEY_A]
        assert len(trial) == 1, len(trial)
        rows = pool_env.wait_rows("select * from account_health where account_id = ? and recovering = 0 "
                                  "and trial_until is null", 1, [a])
        assert rows[0]["failure_streak"] == 0


def test_two_proxies_one_failed_trial_cools_the_account_again_for_both(pool_env, sim):
    """The trial meets another 429: the account cools down again, longer (streak 2), and neither proxy sends
    it a second trial while the new cooldown runs."""
    a = pool_env.add_key("a", KEY_A)
    pool_env.add_key("b", KEY_B)
    with Mitmdump(pool_env) as one, Mitmdump(pool_env) as two:
        seed_half_open(pool_env, a)
        sim.script(KEY_A, [{"kind": "rate_limit", "retry_after": 5, "count": 1}])
        started = time.time()
        assert fire([one, two], 20) == [200] * 20  # the failed trial fails over to b
        assert fire([two, one], 20) == [200] * 20  # a second wave, after the first one's health was shared
        assert time.time() - started < 5, "the waves outlasted the new cooldown; the count below would mean nothing"
        assert [q["credential"] for q in sim.requests()].count(KEY_A) == 1
        rows = pool_env.wait_rows("select * from account_health where account_id = ? and failure_streak = 2", 1, [a])
        h = rows[0]
        assert h["recovering"] == 1 and h["streak_class"] == "rate_limited"
        assert h["cooldown_until"] >= started + 5  # at least the upstream's Retry-After (escalation may add)


def test_repeated_rate_limits_escalate_and_a_success_resets(pool_env, sim):
    a = pool_env.add_key("a", KEY_A)
    pool_env.add_key("b", KEY_B)
    sim.script(KEY_A, [{"kind": "rate_limit", "retry_after": 1, "count": None}])
    lengths = []
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        for streak in (1, 2, 3):
            # Wait for `a`'s cooldown to end, so the next request is its half-open trial (and fails again).
            wait_until(lambda: all((h.cooldown_until or 0) < time.time() for h in _health(pool_env, a)), 10)
            r = client.post("/v1/responses", json=BODY)
            assert r.status_code == 200 and r.headers["x-accountpool-account"].startswith("b")
            [h] = wait_until(lambda s=streak: [h for h in _health(pool_env, a) if h.failure_streak == s])
            lengths.append(round(h.cooldown_until - h.last_error_at))
        # Retry-After 1 s, then ×2 each time (the header is the floor, escalation lengthens it).
        assert lengths == [1, 2, 4]
        sim.script(KEY_A, [])
        wait_until(lambda: all((h.cooldown_until or 0) < time.time() for h in _health(pool_env, a)), 10)
        r = client.post("/v1/responses", json=BODY)
        assert r.headers["x-accountpool-account"].startswith("a")
        [h] = wait_until(lambda: [h for h in _health(pool_env, a) if h.failure_streak == 0])
        assert not h.recovering


def test_one_server_error_does_not_cool_an_account_but_three_in_a_minute_do(pool_env, sim):
    a = pool_env.add_key("a", KEY_A)
    pool_env.add_key("b", KEY_B)
    sim.script(KEY_A, [{"kind": "server_error", "count": None}])
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        for n in range(5):
            r = client.post("/v1/responses", json=BODY)
            assert r.status_code == 200 and r.headers["x-accountpool-account"].startswith("b")
            # Each failed attempt still failed over within its request.
            assert r.headers["x-accountpool-attempts"] == ("2" if n < 3 else "1")
    # The first two 500s cooled nothing (a was tried again); the third opened a cooldown.
    assert [q["credential"] for q in sim.requests()].count(KEY_A) == 3
    [h] = _health(pool_env, a)
    assert h.cooldown_class == "upstream_error" and h.recovering and h.transient_times == []


def _health(pool_env, account_id: str) -> list:
    db = pool_env.db()
    try:
        h = store.load_health(db).get(account_id)
    finally:
        db.close()
    return [h] if h else []


def test_a_request_whose_attempts_all_hit_limits_waits_for_the_earliest_account(pool_env, sim):
    pool_env.add_key("a", KEY_A)
    pool_env.add_key("b", KEY_B)
    sim.script(KEY_A, [{"kind": "rate_limit", "retry_after": 2, "count": 1}])
    sim.script(KEY_B, [{"kind": "rate_limit", "retry_after": 2, "count": 1}])
    with Mitmdump(pool_env) as proxy:
        status, headers, text = post(proxy, True, 1)
        # Both accounts answered 429 before any byte reached the client; the request waited for the first one back
        # and was served by it (a third attempt, within pool_max_attempts).
        assert status == 200, text
        assert headers["x-accountpool-attempts"] == "3"
        assert sse_events(text)[-1][0] == "response.completed"
        [row] = pool_env.wait_rows("select * from requests", 1)
        assert row["outcome"] == "ok" and row["attempts"] == 3 and row["queue_wait_ms"] > 1000
        assert [q["credential"] for q in sim.requests()] in ([KEY_A, KEY_B, KEY_A], [KEY_A, KEY_B, KEY_B])

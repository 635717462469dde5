"""Metrics rows through a real mitmdump (docs/BEHAVIOUR.md §12–§13, issue 4).

One proxy serves the whole module (starting mitmdump is the slow part); every test finds its own
rows by the `x-accountpool-request-id` the client got, so the tests do not depend on each other.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from accountpool.simulator.server import SimulatedUpstream
from harness import Mitmdump, Pool, find_secrets, sse_events

KEY_A = "sk-test-metrics-aaaaaaaaaaaaaaaaaaaa"
KEY_B = "sk-test-metrics-bbbbbbbbbbbbbbbbbbbb"
LOGIN = "acct-metrics-login-1"


@dataclass
class Env:
    sim: SimulatedUpstream
    pool: Pool
    proxy: Mitmdump
    key_a: str
    key_b: str
    login: str

    def row(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        rows = self.pool.wait_rows("select * from requests where id = ?", 1, [request_id], timeout=timeout)
        assert rows, f"no requests row for {request_id}"
        return rows[0]

    def attempts(self, request_id: str) -> list[dict[str, Any]]:
        return self.pool.query("select * from attempts where request_id = ? order by n", [request_id])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    sim = SimulatedUpstream().start()
    try:
        pool = Pool(tmp_path_factory.mktemp("metrics"), sim)
        key_a = pool.add_key("a-key", KEY_A)
        key_b = pool.add_key("b-key", KEY_B)
        login = pool.add_login("c-login", LOGIN)
        # In-flight rows left behind by a killed proxy: the dead one goes at startup, the live one stays.
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        db = pool.db()
        db["inflight"].insert_all([
            {"request_id": "req_stale_dead", "started_at": time.time(), "updated_at": time.time(),
             "pid": gone.pid, "phase": "streaming"},
            {"request_id": "req_stale_live", "started_at": time.time(), "updated_at": time.time(),
             "pid": os.getpid(), "phase": "streaming"}])
        db.close()
        with Mitmdump(pool) as proxy:
            yield Env(sim, pool, proxy, key_a, key_b, login)
    finally:
        sim.stop()


def post(env: Env, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    with env.proxy.client() as client:
        return client.post(path, json=body, headers=headers)


def request_id(r: httpx.Response) -> str:
    return r.headers["x-accountpool-request-id"]


def wait_gone(env: Env, sql: str, params: list[Any] | None = None, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while env.pool.query(sql, params or []):
        assert time.monotonic() < deadline, f"still there after {timeout}s: {sql}"
        time.sleep(0.05)


def marks(values: list[Any]) -> str:
    return ",".join("?" * len(values))


def completed_usage(text: str) -> dict[str, Any]:
    [done] = [data for name, data in sse_events(text) if name == "response.completed"]
    assert isinstance(done, dict)
    return done["response"]["usage"]


# ---------------------------------------------------------------- requests and attempts rows


def test_failover_records_both_attempts(env: Env) -> None:
    # Affinity sends the conversation back to the account that served it first; that one is now
    # rate limited (for 1 s), so another account answers.
    body = {"model": "gpt-5.5", "input": "hello", "prompt_cache_key": "conv-failover"}
    first = post(env, "/v1/responses", body)
    assert first.status_code == 200, first.text
    label = first.headers["x-accountpool-account"].split()[0]
    cred = {"a-key": KEY_A, "b-key": KEY_B, "c-login": LOGIN}[label]
    env.sim.script(cred, [{"kind": "rate_limit", "retry_after": 1}])
    try:
        r = post(env, "/v1/responses", body)
    finally:
        env.sim.script(cred, [])
    assert r.status_code == 200, r.text
    row = env.row(request_id(r))
    attempts = env.attempts(request_id(r))
    assert row["attempts"] == 2 and row["outcome"] == "ok" and row["status"] == 200
    assert [(a["n"], a["class"], a["status"]) for a in attempts] == [(1, "rate_limited", 429), (2, "ok", 200)]
    assert attempts[0]["account_id"] != attempts[1]["account_id"] == row["account_id"]
    assert row["failure_brief"] is None
    assert row["client_key_label"] == "tests"
    assert row["endpoint"] == "/v1/responses" and row["method"] == "POST" and row["model"] == "gpt-5.5"


def test_streamed_responses_tokens_match_response_completed(env: Env) -> None:
    body = {"model": "gpt-5.5", "input": "tell me a story", "stream": True, "prompt_cache_key": "conv-4711"}
    r = post(env, "/v1/responses", body)
    assert r.status_code == 200, r.text
    usage = completed_usage(r.text)
    assert usage["input_tokens_details"]["cached_tokens"] > 0  # the cache key made the sim report some
    row = env.row(request_id(r))
    assert row["stream"] == 1 and row["outcome"] == "ok"
    assert (row["input_tokens"], row["cached_input_tokens"], row["output_tokens"], row["reasoning_tokens"],
            row["total_tokens"]) == (usage["input_tokens"], usage["input_tokens_details"]["cached_tokens"],
                                     usage["output_tokens"], usage["output_tokens_details"]["reasoning_tokens"],
                                     usage["total_tokens"])
    assert 0 <= row["upstream_headers_ms"] <= row["first_chunk_ms"] <= row["total_ms"]
    assert row["stream_ms"] is not None and row["stream_ms"] >= 0
    assert row["request_bytes"] == len(r.request.content)
    # Affinity needs the conversation, the table must not hold it: a hash, never the raw value.
    assert row["session_key"] and "conv-4711" not in row["session_key"]
    assert row["session_key"] == hashlib.sha256(b"prompt_cache_key:conv-4711").hexdigest()[:24]


def test_chat_stream_records_usage_from_the_final_chunk(env: Env) -> None:
    body = {"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "stream_options": {"include_usage": True}}
    r = post(env, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    [usage] = [d["usage"] for _, d in sse_events(r.text) if isinstance(d, dict) and d.get("usage")]
    row = env.row(request_id(r))
    assert (row["input_tokens"], row["cached_input_tokens"], row["output_tokens"], row["reasoning_tokens"],
            row["total_tokens"]) == (usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"],
                                     usage["completion_tokens"],
                                     usage["completion_tokens_details"]["reasoning_tokens"], usage["total_tokens"])
    assert row["endpoint"] == "/v1/chat/completions" and row["stream"] == 1


def test_non_streamed_json_records_usage_from_the_body(env: Env) -> None:
    r = post(env, "/v1/responses", {"model": "gpt-5.5", "input": "hello there"})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    row = env.row(request_id(r))
    assert row["stream"] == 0
    assert (row["input_tokens"], row["output_tokens"], row["reasoning_tokens"], row["total_tokens"]) == (
        usage["input_tokens"], usage["output_tokens"], usage["output_tokens_details"]["reasoning_tokens"],
        usage["total_tokens"])
    assert row["first_chunk_ms"] <= row["total_ms"]


def test_bad_client_key_is_recorded_without_the_key(env: Env) -> None:
    wrong = "apk-wrong-" + "z" * 40
    since = time.time()
    r = post(env, "/v1/responses", {"model": "gpt-5.5", "input": "hi"}, authorization=f"Bearer {wrong}")
    assert r.status_code == 401
    rows = env.pool.wait_rows("select * from requests where outcome = 'client_auth_failed' and started_at >= ?",
                              1, [since - 1])
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == 401 and row["attempts"] == 0 and row["account_id"] is None
    assert row["client_key_label"] is None
    assert not find_secrets(repr(row), [wrong, wrong[-12:]])
    assert not env.pool.query("select * from attempts where request_id = ?", [row["id"]])


# ---------------------------------------------------------------- in flight


def test_a_running_stream_is_visible_in_inflight(env: Env) -> None:
    wait_gone(env, "select 1 from inflight where request_id = 'req_stale_dead'")  # its process is gone
    assert env.pool.query("select 1 from inflight where request_id = 'req_stale_live'")  # a live pid stays
    with env.proxy.client() as client, ThreadPoolExecutor(1) as ex:
        body = {"model": "gpt-5.5", "input": "slow please", "stream": True}
        future = ex.submit(client.post, "/v1/responses", json=body,
                           headers={"x-sim-deltas": "10", "x-sim-delta-delay-ms": "200"})
        rows = env.pool.wait_rows("select * from inflight where phase = 'streaming' and pid != ?", 1,
                                  [os.getpid()], timeout=5)
        assert not future.done(), "the stream ended before the in-flight row showed up"
        r = future.result(30)
    assert r.status_code == 200
    [row] = rows
    assert row["request_id"] == request_id(r)
    assert row["endpoint"] == "/v1/responses" and row["model"] == "gpt-5.5" and row["stream"] == 1
    assert row["client_key_label"] == "tests" and row["account_id"]
    wait_gone(env, "select 1 from inflight where request_id = ?", [request_id(r)])
    assert env.row(request_id(r))["stream_ms"] >= 1000  # ten deltas, 200 ms apart


def test_only_requests_still_running_after_a_moment_touch_inflight(pool_env: Pool) -> None:
    """Quick requests cost the writer one `requests` row, no `inflight` insert/update/delete. The writer
    flushes every 2 ms here, so it is the router that keeps them out, not batches coalescing them."""
    pool_env.add_key("a", "sk-test-alpha-aaaaaaaaaaaaaaaaaaaa")
    with sqlite3.connect(pool_env.db_path) as db:
        db.executescript("""
            CREATE TABLE test_inflight_seen (request_id TEXT);
            CREATE TRIGGER test_inflight_seen AFTER INSERT ON inflight
            BEGIN INSERT INTO test_inflight_seen VALUES (new.request_id); END;""")
    with Mitmdump(pool_env, options={"pool_metrics_flush_ms": 2}) as proxy, proxy.client() as client:
        quick = [client.post("/v1/responses", json={"model": "gpt-5.5", "input": f"quick {i}", "stream": i % 2 == 0},
                             headers={"x-sim-deltas": "4", "x-sim-delta-delay-ms": "5"}) for i in range(10)]
        slow = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "slow", "stream": True},
                           headers={"x-sim-deltas": "4", "x-sim-delta-delay-ms": "250"})
        assert all(r.status_code == 200 for r in [*quick, slow])
        pool_env.wait_rows("select id from requests", len(quick) + 1)
    seen = {row["request_id"] for row in pool_env.query("select request_id from test_inflight_seen")}
    assert request_id(slow) in seen
    assert seen.isdisjoint(request_id(r) for r in quick)


# ---------------------------------------------------------------- a locked database


def test_a_locked_database_delays_rows_not_traffic(env: Env) -> None:
    def one(i: int) -> tuple[int, float, str]:
        t = time.monotonic()
        r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": f"locked {i}"})
        return r.status_code, time.monotonic() - t, r.headers.get("x-accountpool-request-id", "")

    holder = sqlite3.connect(env.pool.db_path, isolation_level=None)
    with env.proxy.client() as client, ThreadPoolExecutor(8) as ex:
        client.post("/v1/responses", json={"model": "gpt-5.5", "input": "warm up"})
        holder.execute("BEGIN IMMEDIATE")
        locked_at = time.monotonic()
        try:
            results = list(ex.map(one, range(50)))
            # Keep the lock for the full two seconds even if the traffic was faster.
            time.sleep(max(0.0, 2.0 - (time.monotonic() - locked_at)))
            ids = [rid for _, _, rid in results]
            assert holder.execute(f"select count(*) from requests where id in ({marks(ids)})", ids).fetchone()[0] == 0
        finally:
            released_at = time.monotonic()
            holder.execute("COMMIT")
            holder.close()
    statuses = [s for s, _, _ in results]
    latencies = sorted(lat for _, lat, _ in results)
    print(f"\nlocked db ({released_at - locked_at:.1f} s): 50 requests, max {latencies[-1] * 1000:.0f} ms, "
          f"median {latencies[25] * 1000:.0f} ms")
    assert statuses == [200] * 50
    assert latencies[-1] < 1.5, f"a request waited {latencies[-1]:.2f}s: the lock reached the traffic"
    rows = env.pool.wait_rows(f"select id from requests where id in ({marks(ids)})", 50, ids, timeout=15)
    assert len(rows) == 50


# ---------------------------------------------------------------- usage observations


def test_usage_windows_and_rate_limits_land_in_account_health(env: Env) -> None:
    since = time.time()
    r = post(env, "/backend-api/codex/responses",
             {"model": "gpt-5.5", "input": "hi", "stream": True, "store": False})
    assert r.status_code == 200, r.text
    for _ in range(20):  # pinned to the key; wait out a cooldown a previous test may have left
        k = post(env, "/v1/responses", {"model": "gpt-5.5", "input": "hi"}, **{"chatgpt-account-id": env.key_b})
        if k.status_code == 200:
            break
        time.sleep(0.2)
    assert k.status_code == 200, k.text
    env.row(request_id(r)), env.row(request_id(k))
    login = env.pool.wait_rows("select * from account_health where account_id = ? and usage_seen_at >= ?", 1,
                               [env.login, since])
    assert login, "no usage window seen for the login"
    assert login[0]["primary_used_percent"] == 10.0 and login[0]["primary_window_minutes"] == 300
    assert login[0]["secondary_window_minutes"] == 10_080
    assert login[0]["primary_reset_at"] > since
    key = env.pool.wait_rows("select * from account_health where account_id = ? and ratelimit_seen_at >= ?", 1,
                             [env.key_b, since])
    assert key, "no rate-limit observation for the key"
    assert key[0]["rl_limit_requests"] == 5_000 and key[0]["rl_remaining_requests"] == 4_999
    assert key[0]["rl_remaining_tokens"] == 1_999_000 and key[0]["last_used_at"] >= since


# ---------------------------------------------------------------- secrets


def _db_files(path: Path) -> list[Path]:
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


def test_no_table_holds_a_secret_after_a_mixed_run(env: Env) -> None:
    env.sim.script(LOGIN, [{"kind": "expired"}])  # the login's next request refreshes its tokens
    r = post(env, "/backend-api/codex/responses",
             {"model": "gpt-5.5", "input": "refresh me", "stream": True, "store": False})
    assert r.status_code == 200, r.text
    env.row(request_id(r))
    assert [(a["class"], a["refreshed"]) for a in env.attempts(request_id(r))] == [("auth_expired", 0), ("ok", 1)]
    post(env, "/v1/responses", {"model": "gpt-5.5", "input": "key", "stream": True})
    post(env, "/v1/responses", {"model": "gpt-5.5", "input": "bad key"}, authorization=f"Bearer {KEY_A}")
    env.sim.script(KEY_A, [{"kind": "server_error"}])
    env.sim.script(KEY_B, [{"kind": "server_error"}])
    post(env, "/v1/responses", {"model": "gpt-5.5", "input": "faulty"}, **{"chatgpt-account-id": env.key_a})
    env.sim.script(KEY_A, [])
    env.sim.script(KEY_B, [])

    secrets = [*env.pool.all_secrets(), env.pool.client_key]
    assert len(secrets) >= 6
    conn = sqlite3.connect(env.pool.db_path)
    try:
        conn.execute("pragma wal_checkpoint(PASSIVE)")
        tables = [t for (t,) in conn.execute("select name from sqlite_master where type = 'table'")]
        assert {"requests", "attempts", "inflight", "account_health", "model_cooldowns", "audit_log"} <= set(tables)
        leaks = []
        for table in tables:
            for row in conn.execute(f"select * from [{table}]"):
                if found := find_secrets(repr(row), secrets):
                    leaks.append((table, found))
    finally:
        conn.close()
    assert not leaks
    for path in _db_files(env.pool.db_path):
        assert not find_secrets(path.read_bytes(), secrets), path.name
    assert not find_secrets(env.proxy.log_text(), secrets), "a secret in the mitmdump log"


# ---------------------------------------------------------------- shutdown


def test_a_clean_stop_writes_what_is_still_queued(pool_env: Pool) -> None:
    """`done()` drains the writer: with a flush window longer than the test, rows land only at shutdown."""
    pool_env.add_key("only", "sk-test-metrics-shutdown-cccccccccccc")
    proxy = Mitmdump(pool_env, options={"pool_metrics_flush_ms": 60_000}).start()
    try:
        with proxy.client() as client:
            ids = [request_id(client.post("/v1/responses", json={"model": "gpt-5.5", "input": f"bye {i}"}))
                   for i in range(3)]
        assert pool_env.query(f"select id from requests where id in ({marks(ids)})", ids) == []
    finally:
        assert proxy.stop() is not None
    rows = pool_env.query(f"select id from requests where id in ({marks(ids)})", ids)
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert pool_env.query("select * from inflight") == []

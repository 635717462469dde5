"""Out of file descriptors is the proxy's limit, not an account's (README, Troubleshooting: `proxy_overloaded`).

A fleet of agents holding thousands of streams reaches `ulimit -n`: each open stream holds four
descriptors in mitmdump. When the relay cannot open its upstream connection for that reason, the
request waits (like a request waiting for an account, up to `pool_max_wait`) until a stream ends and frees
its descriptors; if none does in time, or waiting is off, the client gets 503 `proxy_overloaded` with
`Retry-After`. No account is tried, cooled down or charged with a failed attempt, and the pool serves again
as soon as descriptors are free. Before, the EMFILE
counted as an upstream error against each account in turn, and the next requests got 503
`pool_unavailable` from a pool whose accounts were all fine.

Real parts: mitmdump with the addon, the simulator, and the process's real limit lowered from
outside (`prlimit`) to exactly what the open streams hold plus the descriptors one more stream needs
before its upstream connection.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time

import httpx
from harness import Mitmdump, wait_until

KEY = "sk-test-alpha-aaaaaaaaaaaaaaaaaaaa"
HOLD = {"x-sim-deltas": "100", "x-sim-delta-delay-ms": "100"}  # a stream the upstream keeps open ~10 s
BODY = {"model": "gpt-5.5", "input": "hi", "stream": True}


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_fds(pid: int) -> int:
    """The descriptor count once it has not moved for 0.3 s (a closed connection is let go asynchronously)."""
    last, since = open_fds(pid), time.monotonic()
    while time.monotonic() - since < 0.3:
        time.sleep(0.05)
        if (now := open_fds(pid)) != last:
            last, since = now, time.monotonic()
    return last


def open_stream(held: contextlib.ExitStack, proxy: Mitmdump, pool_env) -> tuple[httpx.Response, object]:
    """A streamed request the upstream keeps open ~10 s, read up to its first chunk (its upstream connection is
    open); the response and its chunk iterator (a dropped iterator would close the response)."""
    client = held.enter_context(httpx.Client(base_url=proxy.url, timeout=30,
                                             headers={"authorization": f"Bearer {pool_env.client_key}"}))
    response = held.enter_context(client.stream("POST", "/v1/responses", json=BODY, headers=HOLD))
    assert response.status_code == 200
    chunks = response.iter_raw()
    next(chunks)
    return response, chunks


def test_out_of_file_descriptors_answers_503_and_blames_no_account(pool_env, sim):
    pool_env.add_key("a", KEY)
    with Mitmdump(pool_env, options={"pool_max_wait": 0}) as proxy, contextlib.ExitStack() as held:
        assert proxy.proc is not None
        pid = proxy.proc.pid
        with proxy.client() as client:  # warm up: the relay, the writer's connection, the upstream pool
            assert client.post("/v1/responses", json={**BODY, "stream": False}).status_code == 200

        readers: list = []

        def hold_stream() -> None:
            readers.append(open_stream(held, proxy, pool_env))

        hold_stream()  # takes the warm-up's pooled upstream connection, if aiohttp kept one
        wait_until(lambda: sim.requests(), timeout=5)
        before = settled_fds(pid)
        hold_stream()
        hold_stream()
        per_stream = (settled_fds(pid) - before) / 2
        assert per_stream == 4, per_stream  # client, mitmproxy → relay, relay ← mitmproxy, relay → upstream

        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (settled_fds(pid) + 3, hard))  # all but the upstream one
        try:
            with httpx.Client(base_url=proxy.url, timeout=30,
                              headers={"authorization": f"Bearer {pool_env.client_key}"}) as client:
                r = client.post("/v1/responses", json=BODY)
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        error = r.json()["error"]
        assert error["code"] == "proxy_overloaded" and "ulimit -n" in error["message"], error
        request_id = r.headers["x-accountpool-request-id"]

        # The pool serves at once (the held streams still run): nothing was cooled down.
        with proxy.client() as client:
            ok = client.post("/v1/responses", json=BODY)
            assert ok.status_code == 200 and "response.completed" in ok.text
        row = pool_env.wait_rows("select * from requests where id = ?", 1, params=[request_id])[0]
        assert (row["status"], row["outcome"], row["attempts"], row["account_id"]) == (503, "proxy_overloaded", 0,
                                                                                       None)
        assert pool_env.query("select * from attempts where request_id = ?", [request_id]) == []
        assert pool_env.query("select * from attempts where class != 'ok'") == []
        health = pool_env.query("select cooldown_until, last_error from account_health")
        assert all(h["cooldown_until"] is None and h["last_error"] is None for h in health), health
        assert "proxy_overloaded" in proxy.log_text() and KEY not in proxy.log_text()


def test_out_of_file_descriptors_the_request_waits_for_a_stream_to_end(pool_env, sim):
    """With waiting on (the default), the request the limit refuses waits until a held stream ends and frees
    its descriptors, then is served: a fleet at `ulimit -n` loses nothing."""
    pool_env.add_key("a", KEY)
    with Mitmdump(pool_env, options={"pool_max_wait": 20}) as proxy, contextlib.ExitStack() as held:
        assert proxy.proc is not None
        pid = proxy.proc.pid
        with proxy.client() as client:
            assert client.post("/v1/responses", json={**BODY, "stream": False}).status_code == 200
        streams = [open_stream(held, proxy, pool_env) for _ in range(3)]
        wait_until(lambda: len(sim.requests()) >= 4, timeout=5)
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (settled_fds(pid) + 3, hard))
        result: dict[str, httpx.Response] = {}

        def waiting_request() -> None:
            with httpx.Client(base_url=proxy.url, timeout=30,
                              headers={"authorization": f"Bearer {pool_env.client_key}"}) as client:
                result["r"] = client.post("/v1/responses", json=BODY)

        thread = threading.Thread(target=waiting_request)
        try:
            thread.start()
            wait_until(lambda: "cannot open an upstream connection" in proxy.log_text(), timeout=10)
            time.sleep(1.5)  # more than one re-check: still no descriptor, still waiting, no answer yet
            assert "r" not in result
            streams[0][0].close()  # one held stream ends
            thread.join(15)
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
            thread.join(30)
        r = result["r"]
        assert r.status_code == 200 and "response.completed" in r.text, r.text
        row = pool_env.wait_rows("select * from requests where id = ?", 1,
                                 params=[r.headers["x-accountpool-request-id"]])[0]
        assert (row["outcome"], row["attempts"]) == ("ok", 1)
        assert row["queue_wait_ms"] >= 1500
        assert pool_env.query("select * from attempts where class not in ('ok', 'client_gone')") == []
        health = pool_env.query("select cooldown_until from account_health")
        assert all(h["cooldown_until"] is None for h in health), health

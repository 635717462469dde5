"""What a new user hit probing the proxy (issue 12 §3–§7), end to end through a real mitmdump.

Each test failed before its fix: paths with `..` reached the upstream with an account's key; one
script with a stale key throttled every local client; unpooled reverse-mode paths skipped the client
key and came back as mitmproxy's HTML; refused bodies were saved whole in flow files; the 503 quoted an
account's stale upstream text instead of its state.
"""

from __future__ import annotations

import json
import time

import httpx
from harness import Mitmdump
from mitmproxy import io as mitmproxy_io
from test_bad_input import raw_request

KEY_A = "sk-test-alpha-aaaaaaaaaaaaaaaaaaaa"
KEY_B = "sk-test-bravo-bbbbbbbbbbbbbbbbbbbb"
BODY = {"model": "gpt-5.5", "input": "hi"}


def error_of(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    error = r.json()["error"]
    assert error["code"] == code, error
    return error["message"]


def test_reverse_mode_needs_the_key_on_every_path_and_answers_unknown_paths_in_json(pool_env, sim):
    pool_env.add_key("a", KEY_A)
    with Mitmdump(pool_env) as proxy, httpx.Client(base_url=proxy.url, trust_env=False, timeout=30) as anon:
        for path in ("/health?x=1", "/", "/v2/responses", "/favicon.ico"):
            assert error_of(anon.get(path), 401, "invalid_client_key")
        with proxy.client() as client:
            message = error_of(client.get("/health?x=1"), 404, "unknown_path")
            assert "/health" in message and "/v1/" in message
            error_of(client.post("/v2/responses", json=BODY), 404, "unknown_path")
            assert client.post("/v1/responses", json=BODY).status_code == 200
        assert [q["path"] for q in sim.requests()] == ["/v1/responses"]  # nothing else reached the upstream
        rows = pool_env.wait_rows("select status, outcome from requests", 7)
        assert sorted(r["status"] for r in rows) == [200, 401, 401, 401, 401, 404, 404]
        assert {r["outcome"] for r in rows if r["status"] == 404} == {"bad_client_request"}


def send_raw(port: int, method: str, target: str, key: str, body: bytes = b"", host: str = "127.0.0.1") -> tuple:
    """(status, JSON body) for a request target sent byte for byte (HTTP clients resolve `..` themselves)."""
    head = (f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    raw = raw_request(port, head.encode(), body)
    head_bytes, _, payload = raw.partition(b"\r\n\r\n")
    return int(head_bytes.split(b" ", 2)[1]), json.loads(payload) if payload.startswith(b"{") else payload


def test_dot_segments_never_reach_an_upstream(pool_env, sim):
    pool_env.add_key("a", KEY_A)
    body = json.dumps(BODY).encode()
    with Mitmdump(pool_env) as proxy:
        for target in ("/v1/../../etc/passwd", "/v1/%2e%2e/%2e%2e/etc/passwd", "/v1/%252e%252e/admin",
                       "/v1%2f..%2f..%2fetc/passwd", "/v1/../etc/passwd", "/backend-api/codex/../../wham/usage",
                       # out of the prefix it started in, into the other pooled one
                       "/v1/../backend-api/codex/responses", "/backend-api/codex/../../v1/responses"):
            status, answer = send_raw(proxy.port, "POST", target, pool_env.client_key, body)
            assert (status, answer["error"]["code"]) == (400, "invalid_path"), (target, answer)
        # Dot segments that stay inside the pooled API are resolved; the upstream sees the clean path.
        status, answer = send_raw(proxy.port, "POST", "/v1/models/../responses", pool_env.client_key, body)
        assert status == 200, answer
        status, answer = send_raw(proxy.port, "GET", "/v1/x/%2e%2e/models", pool_env.client_key)
        assert status == 200, answer
    assert [q["path"] for q in sim.requests()] == ["/v1/responses", "/v1/models"]


WEBSOCKET_UPGRADE = {"connection": "Upgrade", "upgrade": "websocket", "sec-websocket-version": "13",
                     "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="}


def test_a_websocket_upgrade_gets_426_and_never_reaches_an_account(pool_env, sim):
    """Codex CLI opens the Responses API as a WebSocket first and falls back to HTTP at once only on 426 (any
    other answer it retries five times, ~6 s a session). Forwarded, the upgrade would carry an account's
    credential to the upstream for a transport the pool cannot relay or fail over."""
    pool_env.add_key("a", KEY_A)
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        for path in ("/v1/responses", "/backend-api/codex/responses"):
            message = error_of(client.get(path, headers=WEBSOCKET_UPGRADE), 426, "websocket_unsupported")
            assert "HTTP" in message
        # Without the key it is refused like any request: the key comes first.
        with httpx.Client(base_url=proxy.url, trust_env=False, timeout=30) as anon:
            error_of(anon.get("/v1/responses", headers=WEBSOCKET_UPGRADE), 401, "invalid_client_key")
        assert client.post("/v1/responses", json=BODY).status_code == 200  # the HTTP fallback is served
    assert [(q["method"], q["path"]) for q in sim.requests()] == [("POST", "/v1/responses")]


def test_regular_mode_refuses_traversal_on_a_pooled_host(pool_env, sim):
    from test_proxy_modes import regular_client

    pool_env.add_key("a", KEY_A)
    with Mitmdump(pool_env, mode="regular", options={"pool_upstream_hosts": "api.openai.com"}) as proxy, \
            regular_client(proxy, headers={"authorization": f"Bearer {pool_env.client_key}"}) as client:
        r = client.post("https://api.openai.com/v1/%2e%2e/%2e%2e/admin", json=BODY)  # httpx keeps escapes
        error_of(r, 400, "invalid_path")
    assert sim.requests() == []
    # and mitmproxy never connected to api.openai.com for it (the addon made the connection lazy)
    assert "server connect api.openai.com" not in proxy.log_text()


def test_a_stale_key_in_one_script_does_not_lock_out_other_local_clients(pool_env, sim):
    pool_env.add_key("a", KEY_A)
    with Mitmdump(pool_env) as proxy, proxy.client("ap-stale-key-of-a-broken-script") as broken, \
            proxy.client() as good:
        for _ in range(10):
            error_of(broken.post("/v1/responses", json=BODY), 401, "invalid_client_key")
        message = error_of(broken.post("/v1/responses", json=BODY), 429, "client_auth_throttled")
        assert "this client key was refused 10 times" in message and "valid client key are not affected" in message
        # The good client on the same 127.0.0.1 keeps working, before and after more failures of the script.
        for _ in range(3):
            assert good.post("/v1/responses", json=BODY).status_code == 200
            assert broken.post("/v1/responses", json=BODY).status_code == 429
        # Many different wrong keys from one address: that address's *wrong* keys are throttled.
        for i in range(10):
            r = broken.post("/v1/responses", json=BODY, headers={"authorization": f"Bearer ap-guess-{i:02d}"})
            assert r.status_code in (401, 429)
        r = broken.post("/v1/responses", json=BODY, headers={"authorization": "Bearer ap-guess-new"})
        assert "came from 127.0.0.1" in error_of(r, 429, "client_auth_throttled")
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert good.post("/v1/responses", json=BODY).status_code == 200
    assert len(sim.requests()) == 4  # only the good client's requests


def test_refused_bodies_stay_out_of_flow_files(pool_env, sim):
    pool_env.add_key("a", KEY_A)
    flows = pool_env.dir / "run.flows"
    big = b'{"model": "gpt-5.5", "input": "' + b"x" * (8 * 1024 * 1024) + b'"}'

    def chunked():
        for i in range(0, len(big), 1 << 20):
            yield big[i:i + (1 << 20)]

    with Mitmdump(pool_env, options={"pool_max_body": 1 << 20}, extra_args=["-w", str(flows)]) as proxy, \
            proxy.client() as client:
        r = client.post("/v1/responses", content=big, headers={"content-type": "application/json"})
        error_of(r, 413, "request_too_large")
        r = client.post("/v1/responses", content=chunked(), headers={"content-type": "application/json"})
        error_of(r, 413, "request_too_large")
        assert client.post("/v1/responses", json=BODY).status_code == 200
    assert sim.requests()[0]["path"] == "/v1/responses" and len(sim.requests()) == 1
    assert flows.stat().st_size < 256 * 1024, flows.stat().st_size  # was 2 × 8 MiB before
    with open(flows, "rb") as fh:
        saved = list(mitmproxy_io.FlowReader(fh).stream())
    refused = [f for f in saved if f.response is not None and f.response.status_code == 413]
    assert len(refused) == 2
    for f in refused:
        assert not f.request.raw_content
        assert f"request body of {len(big)} bytes dropped" in f.comment


def test_pool_unavailable_names_each_account_state_in_the_pools_words(pool_env, sim):
    pool_env.add_key("work", KEY_A)
    pool_env.add_key("home", KEY_B)
    sim.script(KEY_A, [{"kind": "rate_limit", "retry_after": 30}])
    sim.script(KEY_B, [{"kind": "forbidden"}])
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        r = client.post("/v1/responses", json=BODY)
        first = error_of(r, 502, "pool_attempts_failed")
        assert "1 rate_limited" in first and "1 permission_denied" in first and "back in" in first
        time.sleep(1.2)
        r = client.post("/v1/responses", json=BODY)
        message = error_of(r, 503, "pool_unavailable")
        assert '"work" rate_limited, back in 2' in message, message  # ~29 s left of the 30 s
        assert '"home" permission_denied, back in 4 min' in message, message  # the 300 s auth cooldown
        assert "try again" not in message.lower()  # no stale upstream text about the skipped accounts
        assert 27 <= int(r.headers["retry-after"]) <= 29
    assert len(sim.requests()) == 2

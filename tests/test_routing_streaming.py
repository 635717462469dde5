"""Streams through the proxy: chunk by chunk, in-band failover, cuts after commit, model catalogs."""

from __future__ import annotations

import json
import re
import subprocess
import time

import openai
import pytest
from harness import Mitmdump, openai_client, sse_events, timed_sse

KEY_A = "sk-test-alpha-aaaaaaaaaaaaaaaaaaaa"
KEY_B = "sk-test-bravo-bbbbbbbbbbbbbbbbbbbb"
SLOW = {"x-sim-deltas": "20", "x-sim-delta-delay-ms": "100"}  # the upstream needs ≥ 2 s


def test_stream_is_delivered_chunk_by_chunk(pool_env, sim):
    pool_env.add_key("a", KEY_A)
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        body = {"model": "gpt-5.5", "input": "tell me a long story", "stream": True}
        with client.stream("POST", "/v1/responses", json=body, headers=SLOW) as r:
            assert r.status_code == 200
            events = timed_sse(r)
        deltas = [t for t, name, _ in events if name == "response.output_text.delta"]
        assert len(deltas) == 20
        assert events[-1][1] == "response.completed"
        assert events[-1][0] - deltas[0] >= 1.0, "the first content event waited for the whole stream"
        # The same through the SDK, for a ChatGPT login (Codex backend) as well.
        pool_env.add_login("b-login", "acct-b")
        from accountpool.storage import store

        db = pool_env.db()
        store.set_enabled(db, store.get_account(db, "a").id, False, actor="tests")
        db.close()
        arrivals = []
        stream = openai_client(proxy).responses.create(model="gpt-5.5", input="story", stream=True,
                                                        extra_headers=SLOW)
        for event in stream:
            arrivals.append((time.monotonic(), event.type))
        first = next(t for t, kind in arrivals if kind == "response.output_text.delta")
        assert arrivals[-1][1] == "response.completed"
        assert arrivals[-1][0] - first >= 1.0
        assert sim.requests()[-1]["path"] == "/backend-api/codex/responses"


@pytest.mark.parametrize("event", ["response.failed", "error"])
def test_inband_error_before_content_fails_over_invisibly(pool_env, sim, event):
    a = pool_env.add_login("a", "acct-a")
    b = pool_env.add_login("b", "acct-b")
    sim.script("acct-a", [{"kind": "inband_error", "event": event, "code": "rate_limit_exceeded"}])
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi", "stream": True})
        assert r.status_code == 200
        assert r.headers["x-accountpool-account"].startswith("b")
        names = [name for name, _ in sse_events(r.text)]
        assert names.count("response.created") == 1
        assert "response.failed" not in names and "error" not in names
        assert names[-1] == "response.completed"
        attempts = pool_env.wait_rows("select * from attempts order by n", 2)
        assert [(x["account_id"], x["class"]) for x in attempts] == [(a, "rate_limited"), (b, "ok")]
        health = pool_env.wait_rows("select * from account_health where account_id = ? and cooldown_until > 0",
                                    1, [a])
        assert health[0]["cooldown_class"] == "rate_limited"


def test_cut_after_commit_ends_with_an_explicit_error_event(pool_env, sim):
    a = pool_env.add_key("a", KEY_A)
    pool_env.add_key("b", KEY_B)
    sim.script(KEY_A, [{"kind": "cut", "after_events": 5, "count": 2}])
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi", "stream": True})
        assert r.status_code == 200
        events = sse_events(r.text)
        assert any(name == "response.output_text.delta" for name, _ in events)
        assert "response.completed" not in [name for name, _ in events]
        name, data = events[-1]
        assert name == "error" and data["error"]["code"] == "stream_interrupted"
        row = pool_env.wait_rows("select * from requests", 1)[0]
        assert (row["account_id"], row["outcome"], row["status"]) == (a, "stream_interrupted", 200)
        assert len(sim.requests()) == 1  # committed: no second account was tried
        # The SDK surfaces it as an error rather than a silently short answer.
        with pytest.raises(openai.APIError, match="stream"):
            list(openai_client(proxy).responses.create(model="gpt-5.5", input="hi", stream=True))


def test_model_catalogs_carry_the_context_overrides(pool_env, sim):
    pool_env.add_key("a", KEY_A)
    pool_env.add_login("b", "acct-b")
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        models = {m.id: m for m in openai_client(proxy).models.list()}
        big = models["gpt-5.5"].model_extra
        assert (big["context_window"], big["auto_compact_token_limit"]) == (1_050_000, 650_000)
        assert big["max_context_window"] == 1_050_000
        assert "context_window" not in (models["gpt-5.4-mini"].model_extra or {})
        # Codex's own listing (a ChatGPT login serves it).
        r = client.get("/backend-api/codex/models")
        assert r.status_code == 200, r.text
        codex = {m["slug"]: m for m in r.json()["models"]}
        assert codex["gpt-5.5"]["context_window"] == 1_050_000
        assert codex["gpt-5.5"]["auto_compact_token_limit"] == 650_000
        assert codex["gpt-5.4-mini"]["context_window"] == 272_000


def test_client_leaving_mid_stream_stops_the_upstream_read(pool_env, sim):
    pool_env.add_key("a", KEY_A)
    headers = {**SLOW, "x-sim-deltas": "50"}  # the upstream would need ≥ 5 s
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        body = {"model": "gpt-5.5", "input": "long", "stream": True}
        started = time.monotonic()
        with client.stream("POST", "/v1/responses", json=body, headers=headers) as r:
            for chunk in r.iter_raw():
                if b"output_text.delta" in chunk:
                    break
        # Closing the stream early drops the connection; the relay notices at its next write.
        row = pool_env.wait_rows("select * from requests", 1)[0]
        assert row["outcome"] == "stream_interrupted" and "client" in row["failure_brief"]
        assert time.monotonic() - started < 4.0


def test_a_non_streamed_answer_cut_midway_fails_over_and_flows_keep_their_destination(pool_env, sim):
    """A client that waits for one JSON answer gets it whole from the next account, never half of one."""
    a = pool_env.add_key("a", KEY_A)
    b = pool_env.add_key("b", KEY_B)
    sim.script(KEY_A, [{"kind": "cut"}])  # headers and half the JSON body, then the connection drops
    flows_path = pool_env.dir / "whole.mitm"
    with Mitmdump(pool_env, extra_args=["-w", str(flows_path)]) as proxy, proxy.client() as client:
        r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi"})
        assert r.status_code == 200 and r.json()["status"] == "completed"
        assert r.headers["x-accountpool-account"].startswith("b")
        attempts = pool_env.wait_rows("select * from attempts order by n", 2)
        assert [(x["account_id"], x["class"]) for x in attempts] == [(a, "upstream_error"), (b, "ok")]
        row = pool_env.wait_rows("select * from requests", 1)[0]
        assert (row["outcome"], row["attempts"], row["output_tokens"] > 0) == ("ok", 2, True)
        streamed = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi", "stream": True})
        assert streamed.status_code == 200
    from mitmproxy import io as mitm_io

    with open(flows_path, "rb") as fh:
        whole, stream = list(mitm_io.FlowReader(fh).stream())
    # Both flows show where the client sent them, not the loopback relay (which served the streamed one).
    sim_port = int(sim.url.rsplit(":", 1)[1])
    for flow in (whole, stream):
        assert (flow.request.host, flow.request.port) == ("127.0.0.1", sim_port), flow.request.url
        assert flow.response.status_code == 200
    assert whole.comment.startswith("accountpool: served by b") and stream.comment.startswith("accountpool: served by")


def relay_bytes_received(pid: int, proxy_port: int) -> int:
    """Bytes the relay's side of the loopback hop has received (kernel counters, `ss -ti`)."""
    listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    ports = {int(line.split()[3].rsplit(":", 1)[1]) for line in listening.splitlines() if f"pid={pid}," in line}
    (relay_port,) = ports - {proxy_port}
    out = subprocess.run(["ss", "-Htin", "state", "established", f"( sport = :{relay_port} )"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(m) for m in re.findall(r"bytes_received:(\d+)", out))


def test_a_streamed_request_body_stays_off_the_relay_hop_and_in_the_flow(pool_env, sim):
    """The relay forwards the body the addon admitted: the hop carries the request head only (an agent's request
    is the whole conversation, hundreds of KiB), while the upstream, mitmweb and flow files still see all of it."""
    pool_env.add_key("a", KEY_A)
    flows_path = pool_env.dir / "big.mitm"
    conversation = "x" * (512 * 1024)
    body = {"model": "gpt-5.5", "input": conversation, "stream": True}
    with Mitmdump(pool_env, extra_args=["-w", str(flows_path)]) as proxy, proxy.client() as client:
        assert proxy.proc is not None
        for _ in range(3):
            r = client.post("/v1/responses", json=body, headers={"x-trace": "kept"})
            assert r.status_code == 200 and "response.completed" in r.text
        hop = relay_bytes_received(proxy.proc.pid, proxy.port)
    assert hop < 3 * 4096, hop  # heads only; with the body each request put > 512 KiB through the loopback
    upstream = sim.requests()
    assert len(upstream) == 3 and all(q["body"] == body for q in upstream)
    from mitmproxy import io as mitm_io

    with open(flows_path, "rb") as fh:
        flows = list(mitm_io.FlowReader(fh).stream())
    assert len(flows) == 3
    for flow in flows:
        assert json.loads(flow.request.content) == body
        assert flow.request.headers["content-length"] == str(len(flow.request.content))
        assert flow.request.headers["x-trace"] == "kept" and "x-accountpool-ticket" not in flow.request.headers


def test_a_stream_that_falls_silent_is_cut_after_the_header_timeout(pool_env, sim):
    """The upstream hangs mid-stream: after `pool_header_timeout` of silence the client gets an explicit error
    event (the stream has content already, so no failover), while a shorter pause is no problem."""
    pool_env.add_key("a", KEY_A)
    body = {"model": "gpt-5.5", "input": "hi", "stream": True}
    with Mitmdump(pool_env, options={"pool_header_timeout": 1}) as proxy, proxy.client() as client:
        sim.script(KEY_A, [{"kind": "stall", "after_events": 7, "delay_s": 0.5}])
        r = client.post("/v1/responses", json=body)
        assert sse_events(r.text)[-1][0] == "response.completed"  # 0.5 s of silence: within the limit

        sim.script(KEY_A, [{"kind": "stall", "after_events": 7, "delay_s": 6}])
        started = time.monotonic()
        with client.stream("POST", "/v1/responses", json=body) as r:
            assert r.status_code == 200
            text = r.read().decode()
        elapsed = time.monotonic() - started
        events = sse_events(text)
        assert any(name == "response.output_text.delta" for name, _ in events)
        assert events[-1][0] == "error", events[-1]
        assert 1.0 <= elapsed < 3.5, elapsed  # cut ~1 s after the last byte, not when the upstream resumes at 6 s
        row = pool_env.wait_rows("select * from requests where outcome != 'ok'", 1)[0]
        assert row["outcome"] == "stream_interrupted" and "TimeoutError" in row["failure_brief"], row

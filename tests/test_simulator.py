"""The simulated upstream, driven over real HTTP: wire formats, auth, token rotation, scripted faults."""

from __future__ import annotations

import base64
import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from accountpool.simulator.server import CODEX_CLIENT_ID, SimulatedUpstream

KEY = "sk-proj-simulated-key-0000abcd"
ACCOUNT = "acct-1111"
RESPONSE_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 8,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.fixture
def sim() -> Iterator[SimulatedUpstream]:
    with SimulatedUpstream() as upstream:
        upstream.add_api_key(KEY)
        yield upstream


@pytest.fixture
def client(sim: SimulatedUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=5) as c:
        yield c


@pytest.fixture
def login(sim: SimulatedUpstream) -> dict[str, Any]:
    return sim.add_chatgpt_login(ACCOUNT, email="dev@example.com", plan="pro")


def api(key: str = KEY, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", **extra}


def codex(auth: dict[str, Any], **extra: str) -> dict[str, str]:
    tokens = auth["tokens"]
    return {
        "authorization": f"Bearer {tokens['access_token']}",
        "chatgpt-account-id": tokens["account_id"],
        **extra,
    }


def codex_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-5.5",
        "instructions": "be brief",
        "input": [{"role": "user", "content": "hi"}],
        "stream": True,
        "store": False,
        **extra,
    }


def sse(text: str) -> list[tuple[str | None, Any]]:
    """(event name, parsed data) for each SSE event; `[DONE]` stays a string."""
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            data = fields["data"]
            events.append((fields.get("event"), data if data == "[DONE]" else json.loads(data)))
    return events


def claims(jwt: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(jwt.split(".")[1] + "=="))


# ---- wire formats --------------------------------------------------------------------------------


def test_responses_json(client: httpx.Client) -> None:
    r = client.post("/v1/responses", headers=api(), json={"model": "gpt-5.5", "input": "tell me about cats"})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "response" and body["status"] == "completed" and body["id"].startswith("resp_")
    assert body["output"][0]["content"][0]["text"] == "Simulated reply: tell me about cats"
    assert body["usage"] == {
        "input_tokens": 14,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 10,
        "output_tokens_details": {"reasoning_tokens": 4},
        "total_tokens": 24,
    }
    assert r.headers["x-ratelimit-remaining-requests"] == "4999" and r.headers["x-ratelimit-reset-tokens"] == "6m0s"
    assert r.headers["x-request-id"].startswith("req_")
    cached = client.post("/v1/responses", headers=api(), json={"model": "m", "input": "x", "prompt_cache_key": "k"})
    assert cached.json()["usage"]["input_tokens_details"]["cached_tokens"] == 5


def test_responses_stream_sequence(client: httpx.Client) -> None:
    r = client.post("/v1/responses", headers=api(), json={"model": "gpt-5.5", "input": "hello", "stream": True})
    assert r.headers["transfer-encoding"] == "chunked" and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert [name for name, _ in events] == RESPONSE_EVENTS
    assert all(name == data["type"] for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    text = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    assert text == events[-4][1]["text"] == "Simulated reply: hello"
    assert events[0][1]["response"]["status"] == "in_progress"
    assert events[-1][1]["response"]["usage"]["total_tokens"] == 11 + 7
    few = client.post("/v1/responses", headers=api(**{"x-sim-deltas": "3"}), json={"model": "m", "stream": True})
    assert sum(n == "response.output_text.delta" for n, _ in sse(few.text)) == 3


def test_stream_arrives_chunk_by_chunk(client: httpx.Client) -> None:
    headers = api(**{"x-sim-deltas": "4", "x-sim-delta-delay-ms": "60"})
    arrivals = []
    with client.stream("POST", "/v1/responses", headers=headers, json={"model": "m", "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("event: response.output_text.delta"):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 4 and arrivals[-1] - arrivals[0] >= 0.15


def test_keep_alive_across_json_and_sse(sim: SimulatedUpstream) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", int(sim.url.rsplit(":", 1)[1]), timeout=5)
    socks = []
    for stream in (True, False, True):
        body = json.dumps({"model": "m", "stream": stream})
        conn.request("POST", "/v1/responses", body, {"authorization": f"Bearer {KEY}"})
        assert conn.getresponse().read()
        socks.append(conn.sock)
    assert socks[0] is socks[1] is socks[2]
    conn.close()


def test_tool_call_and_reasoning(client: httpx.Client) -> None:
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    body = {
        "model": "m",
        "stream": True,
        "tools": tools,
        "input": "please call tool now",
        "reasoning": {"effort": "low", "summary": "auto"},
    }
    events = sse(client.post("/v1/responses", headers=api(), json=body).text)
    names = [n for n, _ in events]
    assert "response.reasoning_summary_text.delta" in names and "response.output_text.delta" not in names
    added = [d["item"] for n, d in events if n == "response.output_item.added"]
    assert [i["type"] for i in added] == ["reasoning", "function_call"] and added[1]["name"] == "lookup"
    args = "".join(d["delta"] for n, d in events if n == "response.function_call_arguments.delta")
    assert json.loads(args) == {"query": "please call tool now"}
    assert events[-1][1]["response"]["output"][1]["arguments"] == args
    by_header = client.post(
        "/v1/responses",
        headers=api(**{"x-sim-tool-call": "other"}),
        json={**body, "input": "x", "stream": False},
    )
    assert by_header.json()["output"][1]["name"] == "other"
    result = [{"role": "user", "content": "call tool"}, {"type": "function_call_output", "output": "42"}]
    after = client.post("/v1/responses", headers=api(), json={**body, "stream": False, "input": result})
    assert after.json()["output"][-1]["type"] == "message"


def test_chat_completions(client: httpx.Client) -> None:
    body = {"model": "gpt-5.5", "messages": [{"role": "user", "content": "good morning"}]}
    r = client.post("/v1/chat/completions", headers=api(), json=body).json()
    assert r["object"] == "chat.completion" and r["choices"][0]["finish_reason"] == "stop"
    assert r["choices"][0]["message"]["content"] == "Simulated reply: good morning"
    assert set(r["usage"]) == {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
    }
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    events = [d for _, d in sse(client.post("/v1/chat/completions", headers=api(), json=streamed).text)]
    assert events[-1] == "[DONE]" and events[-2]["choices"] == [] and events[-2]["usage"]["total_tokens"] > 0
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2]) == "Simulated reply: good morning"
    plain = sse(client.post("/v1/chat/completions", headers=api(), json={**body, "stream": True}).text)
    assert plain[-1][1] == "[DONE]" and all(d == "[DONE]" or d["choices"] for _, d in plain)
    tool_body = {
        **body,
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "messages": [{"role": "user", "content": "call tool"}],
    }
    call = client.post("/v1/chat/completions", headers=api(), json=tool_body).json()["choices"][0]
    assert call["finish_reason"] == "tool_calls" and call["message"]["tool_calls"][0]["function"]["name"] == "f"


def test_models_and_unknowns(client: httpx.Client) -> None:
    models = client.get("/v1/models", headers=api()).json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["gpt-5.5", "gpt-5.4-mini"]
    wrong = client.get("/v1/models", headers=api("sk-wrong-key-9999wxyz"))
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert "sk-wrong-key-9999wxyz" not in wrong.text and "wxyz" in wrong.text
    missing = client.post("/v1/nope", headers=api())
    assert missing.status_code == 404 and "Invalid URL" in missing.json()["error"]["message"]
    assert client.post("/v1/responses", headers=api(), content=b"{").status_code == 400


# ---- Codex backend and logins ---------------------------------------------------------------------


def test_codex_backend(sim: SimulatedUpstream, client: httpx.Client, login: dict[str, Any]) -> None:
    url = "/backend-api/codex/responses"
    r = client.post(url, headers=codex(login), json=codex_body())
    assert r.status_code == 200 and [n for n, _ in sse(r.text)] == RESPONSE_EVENTS
    assert r.headers["x-codex-primary-used-percent"] == "10.0" and r.headers["x-codex-primary-window-minutes"] == "300"
    assert r.headers["x-codex-secondary-window-minutes"] == "10080"
    assert int(r.headers["x-codex-primary-reset-at"]) > time.time()
    assert (
        client.post(url, headers=codex(login, **{"chatgpt-account-id": "other"}), json=codex_body()).status_code == 403
    )
    no_account = {"authorization": codex(login)["authorization"]}
    assert client.post(url, headers=no_account, json=codex_body()).status_code == 403
    assert client.post(url, headers=api(), json=codex_body()).status_code == 401
    for body, detail in [
        (codex_body(stream=False), "Stream must be set to true"),
        (codex_body(store=True), "Store must be set to false"),
        (codex_body(metadata={"a": 1}), "Unsupported parameter: metadata"),
    ]:
        bad = client.post(url, headers=codex(login), json=body)
        assert (bad.status_code, bad.json()) == (400, {"detail": detail})
    models = client.get("/backend-api/codex/models", headers=codex(login)).json()["models"]
    assert models[0]["slug"] == "gpt-5.5" and models[0]["context_window"] == 272_000
    sim.set_usage(ACCOUNT, primary_used_percent=42.5, secondary_reset_after_seconds=600)
    usage = client.get("/backend-api/wham/usage", headers=codex(login)).json()
    assert usage["plan_type"] == "pro" and usage["rate_limit"]["primary_window"]["used_percent"] == 42.5
    assert usage["rate_limit"]["secondary_window"]["limit_window_seconds"] == 604_800
    assert 590 <= usage["rate_limit"]["secondary_window"]["reset_after_seconds"] <= 600


def test_login_tokens_are_jwts(login: dict[str, Any]) -> None:
    assert login["OPENAI_API_KEY"] is None and login["last_refresh"].endswith("Z")
    id_claims, access = claims(login["tokens"]["id_token"]), claims(login["tokens"]["access_token"])
    assert id_claims["email"] == "dev@example.com"
    assert id_claims["https://api.openai.com/auth"]["chatgpt_plan_type"] == "pro"
    assert access["https://api.openai.com/auth"]["chatgpt_account_id"] == ACCOUNT
    assert access["client_id"] == CODEX_CLIENT_ID and 3500 < access["exp"] - time.time() <= 3600


def test_refresh_rotation(sim: SimulatedUpstream, client: httpx.Client, login: dict[str, Any]) -> None:
    old = login["tokens"]
    grant = {
        "grant_type": "refresh_token",
        "refresh_token": old["refresh_token"],
        "client_id": CODEX_CLIENT_ID,
        "scope": "openid profile email",
    }
    r = client.post("/oauth/token", json=grant)
    assert r.status_code == 200 and r.json()["token_type"] == "Bearer" and r.json()["expires_in"] == 3600
    new = r.json()
    assert new["refresh_token"] != old["refresh_token"] and sim.refresh_count(ACCOUNT) == 1
    assert sim.current_tokens(ACCOUNT)["access_token"] == new["access_token"]
    reuse = client.post("/oauth/token", json=grant)
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    stale = client.post("/backend-api/codex/responses", headers=codex(login), json=codex_body())
    assert stale.status_code == 401
    fresh = {"tokens": {**old, "access_token": new["access_token"]}}
    assert client.post("/backend-api/codex/responses", headers=codex(fresh), json=codex_body()).status_code == 200
    form = {**grant, "refresh_token": new["refresh_token"]}
    assert client.post("/oauth/token", data=form).status_code == 200 and sim.refresh_count(ACCOUNT) == 2
    current = sim.current_tokens(ACCOUNT)["refresh_token"]
    wrong_client = client.post("/oauth/token", json={**grant, "refresh_token": current, "client_id": "app_x"})
    assert wrong_client.status_code == 401 and wrong_client.json()["error"] == "invalid_client"


def test_expired_fault_lasts_until_refresh(sim: SimulatedUpstream, client: httpx.Client, login: dict) -> None:
    sim.script(ACCOUNT, [{"kind": "expired"}])
    url = "/backend-api/codex/responses"
    for _ in range(2):
        r = client.post(url, headers=codex(login), json=codex_body())
        assert r.status_code == 401 and r.json()["error"]["code"] == "token_expired"
    grant = {
        "grant_type": "refresh_token",
        "refresh_token": login["tokens"]["refresh_token"],
        "client_id": CODEX_CLIENT_ID,
    }
    client.post("/oauth/token", json=grant).raise_for_status()
    assert client.post(url, headers=codex({"tokens": sim.current_tokens(ACCOUNT)}), json=codex_body()).is_success
    short = sim.add_chatgpt_login("acct-short", email="s@example.com", access_ttl_s=0)
    assert client.get("/backend-api/wham/usage", headers=codex(short)).status_code == 401


def test_refresh_errors(sim: SimulatedUpstream, client: httpx.Client, login: dict[str, Any]) -> None:
    sim.script(
        ACCOUNT,
        [{"kind": "refresh_error", "status": 500}, {"kind": "refresh_error", "error": "invalid_grant"}],
    )
    grant = {
        "grant_type": "refresh_token",
        "refresh_token": login["tokens"]["refresh_token"],
        "client_id": CODEX_CLIENT_ID,
    }
    assert client.post("/oauth/token", json=grant).status_code == 500
    assert client.post("/backend-api/wham/usage", headers=codex(login)).status_code == 404  # GET only
    assert client.get("/backend-api/wham/usage", headers=codex(login)).status_code == 200  # not a refresh fault
    assert client.post("/oauth/token", json=grant).json()["error"] == "invalid_grant"
    assert client.post("/oauth/token", json=grant).status_code == 200 and sim.refresh_count(ACCOUNT) == 1


# ---- faults ---------------------------------------------------------------------------------------


def test_status_faults(sim: SimulatedUpstream, client: httpx.Client) -> None:
    sim.script(
        KEY,
        [
            {"kind": "rate_limit", "retry_after": 7},
            {"kind": "quota"},
            {"kind": "forbidden"},
            {"kind": "server_error", "status": 503},
            {"kind": "invalid_request"},
            {"kind": "expired"},
        ],
    )
    body = {"model": "gpt-5.5", "input": "x"}
    got = [client.post("/v1/responses", headers=api(), json=body) for _ in range(7)]
    assert [r.status_code for r in got] == [429, 429, 403, 503, 400, 401, 200]
    limited = got[0]
    assert limited.headers["retry-after"] == "7" and limited.headers["x-ratelimit-reset-requests"] == "7s"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded" and "gpt-5.5" in limited.text
    assert got[1].json()["error"]["code"] == "insufficient_quota"
    assert got[5].json()["error"]["code"] == "token_expired"


def test_fault_filters_and_counts(sim: SimulatedUpstream, client: httpx.Client) -> None:
    sim.script(
        KEY,
        [
            {"kind": "model_not_found", "model": "gpt-x", "count": None},
            {"kind": "server_error", "path": "/chat/", "count": 2},
        ],
    )
    for _ in range(3):
        r = client.post("/v1/responses", headers=api(), json={"model": "gpt-x"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found" and "`gpt-x`" in r.text
    assert client.post("/v1/responses", headers=api(), json={"model": "gpt-5.5"}).status_code == 200
    chat = {"model": "gpt-5.5", "messages": []}
    codes = [client.post("/v1/chat/completions", headers=api(), json=chat).status_code for _ in range(3)]
    assert codes == [500, 500, 200]
    with pytest.raises(ValueError):
        sim.script(KEY, [{"kind": "meteor"}])


def test_login_quota(sim: SimulatedUpstream, client: httpx.Client, login: dict[str, Any]) -> None:
    sim.script(ACCOUNT, [{"kind": "quota", "resets_in_seconds": 900}])
    r = client.post("/backend-api/codex/responses", headers=codex(login), json=codex_body())
    error = r.json()["error"]
    assert r.status_code == 429 and error["type"] == "usage_limit_reached" and error["plan_type"] == "pro"
    assert error["resets_in_seconds"] == 900 and abs(error["resets_at"] - time.time() - 900) < 5
    assert r.headers["x-codex-primary-used-percent"] == "100.0"


def test_reset_and_cut(sim: SimulatedUpstream, client: httpx.Client) -> None:
    sim.script(KEY, [{"kind": "reset"}, {"kind": "cut"}, {"kind": "cut"}])
    with pytest.raises(httpx.ReadError, match="reset"):  # a TCP RST, not a polite FIN
        client.post("/v1/responses", headers=api(), json={"model": "m"})
    seen: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):  # noqa: SIM117
        with client.stream("POST", "/v1/responses", headers=api(), json={"model": "m", "stream": True}) as r:
            assert r.status_code == 200
            seen.extend(line for line in r.iter_lines() if line.startswith("event:"))
    assert len(seen) == 3
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/v1/responses", headers=api(), json={"model": "m"})
    assert client.post("/v1/responses", headers=api(), json={"model": "m"}).status_code == 200


def test_slow_first_byte(sim: SimulatedUpstream, client: httpx.Client) -> None:
    sim.script(KEY, [{"kind": "slow_first_byte", "delay_s": 0.3}])
    started = time.monotonic()
    assert client.post("/v1/responses", headers=api(), json={"model": "m"}).status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    client.post("/v1/responses", headers=api(), json={"model": "m"})
    assert time.monotonic() - started < 0.3


def test_inband_errors(sim: SimulatedUpstream, client: httpx.Client, login: dict[str, Any]) -> None:
    sim.script(ACCOUNT, [{"kind": "inband_error"}, {"kind": "inband_error", "event": "error", "code": "usage_limit"}])
    url = "/backend-api/codex/responses"
    failed = sse(client.post(url, headers=codex(login), json=codex_body()).text)
    assert [n for n, _ in failed] == ["response.created", "response.in_progress", "response.failed"]
    assert failed[-1][1]["response"]["error"]["code"] == "rate_limit_exceeded"
    errored = client.post(url, headers=codex(login), json=codex_body())
    assert errored.status_code == 200 and sse(errored.text)[-1] == (
        "error",
        {
            "type": "error",
            "code": "usage_limit",
            "message": "Rate limit reached for gpt-5.5. Please try again in 1s.",
            "param": None,
            "sequence_number": 2,
        },
    )


# ---- recording and control ------------------------------------------------------------------------


def test_request_recording(sim: SimulatedUpstream, client: httpx.Client, login: dict[str, Any]) -> None:
    client.post("/v1/responses", headers=api(), json={"model": "m"})
    client.get("/backend-api/wham/usage?x=1", headers=codex(login))
    client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": "nope"})
    first, second, third = sim.requests()
    assert (first["method"], first["path"], first["credential"], first["body"]) == (
        "POST",
        "/v1/responses",
        KEY,
        {"model": "m"},
    )
    assert first["auth"] == f"Bearer {KEY}" and first["headers"]["content-type"] == "application/json"
    assert second["account_header"] == ACCOUNT and second["credential"] == ACCOUNT and second["query"] == "x=1"
    assert third["credential"] is None and third["body"] == "grant_type=refresh_token&refresh_token=nope"
    assert first["at"] <= second["at"] <= third["at"]
    sim.reset_requests()
    assert sim.requests() == []


def test_http_control_api(sim: SimulatedUpstream, client: httpx.Client) -> None:
    assert client.post("/_sim/api_keys", json={"key": "sk-other-key-1234", "plan": "free"}).json() == {"ok": True}
    auth = client.post("/_sim/logins", json={"account_id": "acct-http", "plan": "team"}).json()
    assert claims(auth["tokens"]["id_token"])["email"] == "acct-http@example.com"
    client.post("/_sim/script", json={"credential": "sk-other-key-1234", "faults": [{"kind": "forbidden"}]})
    assert client.get("/v1/models", headers=api("sk-other-key-1234")).status_code == 403
    client.post("/_sim/usage", json={"credential": "acct-http", "primary_used_percent": 77})
    assert client.get("/backend-api/wham/usage", headers=codex(auth)).headers["x-codex-primary-used-percent"] == "77.0"
    recorded = client.get("/_sim/requests").json()
    assert [r["path"] for r in recorded] == ["/v1/models", "/backend-api/wham/usage"]
    tokens = client.get("/_sim/tokens", params={"account_id": "acct-http"}).json()
    assert tokens["access_token"] == auth["tokens"]["access_token"] and tokens["refresh_count"] == 0
    assert client.post("/_sim/script", json={"credential": "x", "faults": [{"kind": "bad"}]}).status_code == 400
    client.post("/_sim/reset")
    assert client.get("/_sim/requests").json() == []


def test_refuses_non_loopback() -> None:
    with pytest.raises(ValueError):
        SimulatedUpstream(host="0.0.0.0")


def test_command_line() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "accountpool.simulator", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("accountpool-simulator listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        httpx.post(f"{url}/_sim/api_keys", json={"key": KEY}).raise_for_status()
        assert httpx.get(f"{url}/v1/models", headers=api()).status_code == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0


def test_openai_sdk_parses_the_wire_formats(sim: SimulatedUpstream) -> None:
    """The official SDK's typed models are the strictest readily available check of fidelity."""
    import openai

    sdk = openai.OpenAI(base_url=f"{sim.url}/v1", api_key=KEY, max_retries=0)
    assert sdk.responses.create(model="gpt-5.5", input="hi sdk").output_text == "Simulated reply: hi sdk"
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}]
    with sdk.responses.stream(model="gpt-5.5", input="call tool", tools=tools) as stream:
        assert stream.get_final_response().output[0].type == "function_call"
    chunks = list(
        sdk.chat.completions.create(
            model="gpt-5.5",
            messages=[{"role": "user", "content": "yo"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens_details.reasoning_tokens == 4
    sim.script(KEY, [{"kind": "rate_limit"}])
    with pytest.raises(openai.RateLimitError):
        sdk.models.list()

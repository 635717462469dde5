"""Issue 8 end to end: ChatGPT logins serve Chat Completions and `stream: false` clients."""

from __future__ import annotations

import json

import pytest
from harness import Mitmdump
from openai import OpenAI

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


@pytest.fixture
def login_proxy(pool_env, sim):
    pool_env.add_login("login", "acct-translate", plan="pro")
    with Mitmdump(pool_env) as p:
        yield p


def sdk(proxy, pool_env) -> OpenAI:
    return OpenAI(base_url=proxy.url + "/v1", api_key=pool_env.client_key, max_retries=0)


def backend_calls(sim) -> list[dict]:
    return [r for r in sim.requests() if r["path"] == "/backend-api/codex/responses"]


def test_chat_completion_served_by_login(login_proxy, pool_env, sim):
    client = sdk(login_proxy, pool_env)
    chat = client.chat.completions.create(model="gpt-5.5", messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello login"}], max_tokens=50,
        temperature=0.2)
    assert chat.object == "chat.completion"
    assert chat.choices[0].message.content.startswith("Simulated reply")
    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage.prompt_tokens > 0 and chat.usage.completion_tokens_details.reasoning_tokens == 4
    [call] = backend_calls(sim)
    body = call["body"]
    assert body["stream"] is True and body["store"] is False
    assert body["instructions"] == "Be brief."
    assert "reasoning.encrypted_content" in body["include"]
    assert "max_output_tokens" not in body and "temperature" not in body  # the backend rejects them
    assert call["account_header"] == "acct-translate"


def test_chat_stream_with_tools_served_by_login(login_proxy, pool_env, sim):
    client = sdk(login_proxy, pool_env)
    chunks = list(client.chat.completions.create(
        model="gpt-5.5", messages=[{"role": "user", "content": "please call tool for Paris"}], tools=TOOLS,
        stream=True, stream_options={"include_usage": True}, extra_headers={"x-sim-tool-call": "get_weather"}))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].index == 0 and calls[0].function.name == "get_weather"
    arguments = "".join(tc.function.arguments or "" for tc in calls)
    assert isinstance(json.loads(arguments), dict)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["tool_calls"]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    [call] = backend_calls(sim)
    assert call["body"]["tools"][0]["name"] == "get_weather"  # flattened Responses tool


def test_chat_non_stream_tool_call_assembled(login_proxy, pool_env, sim):
    chat = sdk(login_proxy, pool_env).chat.completions.create(
        model="gpt-5.5", messages=[{"role": "user", "content": "call tool please"}], tools=TOOLS,
        extra_headers={"x-sim-tool-call": "get_weather"})
    message = chat.choices[0].message
    assert chat.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls[0].function.name == "get_weather"


def test_responses_stream_false_assembled_from_stream(login_proxy, pool_env, sim):
    response = sdk(login_proxy, pool_env).responses.create(model="gpt-5.5", input="whole please",
                                                           metadata={"k": "v"})
    assert response.status == "completed"
    assert response.output_text.startswith("Simulated reply")
    [call] = backend_calls(sim)
    assert call["body"]["stream"] is True and "metadata" not in call["body"]


def test_translated_stream_records_tokens(login_proxy, pool_env, sim):
    list(sdk(login_proxy, pool_env).chat.completions.create(
        model="gpt-5.5", messages=[{"role": "user", "content": "count my tokens"}], stream=True))
    [row] = pool_env.wait_rows("select * from requests where endpoint = '/v1/chat/completions'", 1)
    assert row["outcome"] == "ok" and row["input_tokens"] > 0 and row["output_tokens"] > 0
    assert row["total_tokens"] == row["input_tokens"] + row["output_tokens"]


def test_failover_from_limited_login_to_api_key_in_one_chat_request(pool_env, sim):
    pool_env.add_login("a-login", "acct-limited", plan="pro")
    key_account = pool_env.add_key("z-key", "sk-test-translate-key-cccccccccccc")
    sim.script("acct-limited", [{"kind": "quota", "count": None}])
    with Mitmdump(pool_env) as proxy:
        client = sdk(proxy, pool_env)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-5.5", messages=[{"role": "user", "content": "fail over please"}])
        assert raw.headers["x-accountpool-account"].startswith("z-key")
        assert raw.parse().choices[0].message.content.startswith("Simulated reply")
        paths = [r["path"] for r in sim.requests()]
        assert paths == ["/backend-api/codex/responses", "/v1/chat/completions"]
        [row] = pool_env.wait_rows("select * from requests", 1)
        assert row["account_id"] == key_account and row["attempts"] == 2
        classes = [a["class"] for a in pool_env.query("select class from attempts order by n")]
        assert classes == ["quota_exceeded", "ok"]

"""Golden and property tests for `accountpool.translation` (issue 8).

Each `tests/fixtures/translate/<name>.json` holds a Chat Completions request and the Responses
SSE events a Codex backend sends for it (recorded shapes: sequence numbers, obfuscation fields,
encrypted reasoning…). `<name>.expected.json` freezes what the translators make of them; it was
generated once, read by eye, and is only rewritten with `ACCOUNTPOOL_UPDATE_GOLDEN=1`.
Independently of the goldens, every emitted chunk and object is validated against the `openai`
SDK's own types, so a frozen mistake in shape cannot hide.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from accountpool.translation.chat_stream import DONE_LINE, ChatStreamTranslator, ResponsesStreamError
from accountpool.translation.request_mapping import (
    CHAT_DROPPED_PARAMETERS,
    CHATGPT_ACCEPTED_FIELDS,
    CHATGPT_DROPPED_REASONS,
    chat_request_to_responses,
    chat_request_to_responses_with_dropped,
    dropped_fields,
    normalize_for_chatgpt,
    normalize_for_chatgpt_with_dropped,
)
from accountpool.translation.whole_answer import assemble_chat_completion, final_response_object
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.completion_create_params import CompletionCreateParamsStreaming
from openai.types.responses import Response
from openai.types.responses.response_create_params import ResponseCreateParamsStreaming
from pydantic import TypeAdapter

FIXTURES = Path(__file__).parent / "fixtures" / "translate"
NAMES = sorted(p.name.removesuffix(".json") for p in FIXTURES.glob("*.json") if ".expected" not in p.name)
UPDATE = os.environ.get("ACCOUNTPOOL_UPDATE_GOLDEN") == "1"
DEFAULT_INSTRUCTIONS = "You are Codex, served through accountpool."

RESPONSES_REQUEST = TypeAdapter(ResponseCreateParamsStreaming)
CHAT_REQUEST = TypeAdapter(CompletionCreateParamsStreaming)

COMPLETION_ID = "chatcmpl-accountpool-0001"
CREATED = 1767225600


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def events_of(fixture: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(etype, data) for etype, data in fixture["events"]]


def validate_response(response: dict[str, Any]) -> None:
    """`Response.model_validate`, with two tolerances for what the Codex backend really sends:
    a usage without `cache_write_tokens` (SDK 2.x requires it; older recordings lack it and
    nothing here reads it), and error codes outside the SDK's closed list (the backend reports
    `usage_limit_reached`, `insufficient_quota`, `usage_not_included`… in `response.failed`)."""
    response = copy.deepcopy(response)
    details = (response.get("usage") or {}).get("input_tokens_details")
    if isinstance(details, dict):
        details.setdefault("cache_write_tokens", 0)
    if isinstance(response.get("error"), dict):
        response["error"]["code"] = "server_error"
    Response.model_validate(response)


def sdk_view(body: dict[str, Any]) -> dict[str, Any]:
    """The request as the SDK's types want it, for shape validation only.

    We send assistant history the way Codex CLI does (`{"type": "message", "role": "assistant",
    "content": [{"type": "output_text", "text": …}]}`, no id): that is what the Codex backend is
    known to accept, and an id would point at an item that store=false never kept. The SDK types
    such an item as an output message with a required id, status and annotations, so the view
    fills those in before validating everything else.
    """
    view = copy.deepcopy(body)
    for item in view.get("input") or []:
        if (
            isinstance(item, dict)
            and item.get("role") == "assistant"
            and isinstance(item.get("content"), list)
        ):
            item.setdefault("id", "msg_history")
            item.setdefault("status", "completed")
            for part in item["content"]:
                if part.get("type") == "output_text":
                    part.setdefault("annotations", [])
    return view


def decode_sse(raw: list[bytes]) -> list[Any]:
    """Emitted SSE frames → their payloads (`"[DONE]"` stays a string), checking the framing."""
    out: list[Any] = []
    for frame in raw:
        assert frame.startswith(b"data: ") and frame.endswith(b"\n\n") and frame.count(b"\n") == 2
        payload = frame[len(b"data: ") : -2].decode()
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def run_stream(
    fixture: dict[str, Any], *, include_usage: bool | None = None, model: str = "gpt-5.5"
) -> tuple[ChatStreamTranslator, list[bytes]]:
    translator = ChatStreamTranslator(
        model=model,
        include_usage=fixture["include_usage"] if include_usage is None else include_usage,
        completion_id=COMPLETION_ID,
        created=CREATED,
    )
    raw: list[bytes] = []
    for etype, data in events_of(fixture):
        raw.extend(translator.feed(etype, data))
    raw.extend(translator.finish())
    return translator, raw


def produce(name: str) -> dict[str, Any]:
    """Everything the translators make of one fixture, in the shape of the golden file."""
    fixture = load(name)
    responses_body, chat_dropped = chat_request_to_responses_with_dropped(fixture["chat_request"])
    chatgpt_body, chatgpt_dropped = normalize_for_chatgpt_with_dropped(
        responses_body, default_instructions=DEFAULT_INSTRUCTIONS
    )
    _, raw = run_stream(fixture)
    try:
        completion: dict[str, Any] = assemble_chat_completion(
            events_of(fixture), model="gpt-5.5", completion_id=COMPLETION_ID, created=CREATED
        )
    except ResponsesStreamError as exc:
        completion = {"raised": exc.error}
    final = final_response_object(events_of(fixture))
    return {
        "responses_request": responses_body,
        "chat_dropped": chat_dropped,
        "chatgpt_request": chatgpt_body,
        "chatgpt_dropped": chatgpt_dropped,
        "stream": decode_sse(raw),
        "completion": completion,
        "final_response_status": None if final is None else final["status"],
    }


@pytest.mark.parametrize("name", NAMES)
def test_golden(name: str) -> None:
    produced = produce(name)
    path = FIXTURES / f"{name}.expected.json"
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"missing golden {path.name}; run with ACCOUNTPOOL_UPDATE_GOLDEN=1 and review it")
        path.write_text(json.dumps(produced, indent=2, ensure_ascii=False) + "\n")
    expected = json.loads(path.read_text())
    assert produced == expected


@pytest.mark.parametrize("name", NAMES)
def test_outputs_have_the_sdk_shapes(name: str) -> None:
    fixture = load(name)
    CHAT_REQUEST.validate_python(fixture["chat_request"] | {"stream": True})
    responses_body = chat_request_to_responses(fixture["chat_request"])
    RESPONSES_REQUEST.validate_python(sdk_view(responses_body) | {"stream": True})
    RESPONSES_REQUEST.validate_python(sdk_view(normalize_for_chatgpt(responses_body)))

    _, raw = run_stream(fixture)
    for payload in decode_sse(raw):
        if payload == "[DONE]" or "error" in payload:
            continue
        ChatCompletionChunk.model_validate(payload)
    try:
        completion = assemble_chat_completion(
            events_of(fixture), model="gpt-5.5", completion_id=COMPLETION_ID, created=CREATED
        )
    except ResponsesStreamError:
        assert name == "usage_limited_failed"
    else:
        ChatCompletion.model_validate(completion)
    final = final_response_object(events_of(fixture))
    assert final is not None
    validate_response(final)
    for _, data in events_of(fixture):
        if "response" in data:
            validate_response(data["response"])


# --- streaming behaviour ----------------------------------------------------------------------


def test_stream_framing_role_first_done_last() -> None:
    translator, raw = run_stream(load("plain_text"))
    payloads = decode_sse(raw)
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert raw[-1] == DONE_LINE
    assert payloads[-2]["choices"] == [] and payloads[-2]["usage"] == translator.usage
    assert payloads[-3]["choices"][0]["finish_reason"] == "stop"
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads[:-2])
    assert text == "Hello! How can I help you today?"
    assert translator.usage == {
        "prompt_tokens": 1203,
        "completion_tokens": 12,
        "total_tokens": 1215,
        "prompt_tokens_details": {"cached_tokens": 1024},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def test_metadata_events_produce_no_bytes_so_the_relay_can_still_fail_over() -> None:
    fixture = load("usage_limited_failed")
    translator = ChatStreamTranslator(model="m", include_usage=True, completion_id="c", created=1)
    created, in_progress, failed = events_of(fixture)
    assert translator.feed(*created) == []
    assert translator.feed(*in_progress) == []
    out = decode_sse(translator.feed(*failed))
    assert out == [
        {
            "error": {
                "message": "The usage limit has been reached. Try again in 2 hours 13 minutes.",
                "type": "usage_limit_reached",
                "code": "usage_limit_reached",
                "param": None,
            }
        }
    ]
    assert translator.finished and translator.error is not None
    assert translator.finish() == []  # no [DONE], no second error


def test_parallel_tool_calls_get_indices_0_and_1() -> None:
    translator, raw = run_stream(load("tools_multi_turn"))
    calls: dict[int, dict[str, str]] = {}
    for payload in decode_sse(raw):
        if payload == "[DONE]":
            continue
        for tc in payload["choices"][0]["delta"].get("tool_calls") or []:
            entry = calls.setdefault(tc["index"], {"id": tc.get("id", ""), "name": "", "arguments": ""})
            entry["name"] += tc["function"].get("name") or ""
            entry["arguments"] += tc["function"].get("arguments") or ""
            if "id" in tc:
                assert tc["type"] == "function"
    assert calls == {
        0: {"id": "call_Wx7pQe1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        1: {"id": "call_Tm3kLz9", "name": "get_time", "arguments": '{"city":"Paris"}'},
    }
    assert translator.finish_reason == "tool_calls"


def test_include_usage_false_sends_no_usage_chunk() -> None:
    translator, raw = run_stream(load("plain_text"), include_usage=False)
    payloads = decode_sse(raw)
    assert all(p == "[DONE]" or p["choices"] for p in payloads)
    assert all(p == "[DONE]" or "usage" not in p for p in payloads)
    assert translator.usage is not None  # still recorded for metrics
    assert raw[-1] == DONE_LINE


def test_reasoning_summary_parts_become_reasoning_content() -> None:
    _, raw = run_stream(load("reasoning"))
    reasoning = "".join(
        p["choices"][0]["delta"].get("reasoning_content") or ""
        for p in decode_sse(raw)
        if p != "[DONE]" and p["choices"]
    )
    assert reasoning == (
        "**Considering prime factors**\n\nI need to factor 391.\n\n**Checking divisors**\n\n17 × 23 = 391."
    )


def test_incomplete_means_length_and_still_done() -> None:
    translator = ChatStreamTranslator(model="m", include_usage=True, completion_id="c", created=1)
    translator.feed("response.output_text.delta", {"item_id": "msg_1", "content_index": 0, "delta": "Once"})
    raw = translator.feed(
        "response.incomplete",
        {
            "response": {
                "status": "incomplete",
                "incomplete_details": {"reason": "max_output_tokens"},
                "usage": {"input_tokens": 5, "output_tokens": 1, "total_tokens": 6},
            }
        },
    )
    payloads = decode_sse(raw)
    assert payloads[0]["choices"][0]["finish_reason"] == "length"
    assert payloads[1]["usage"]["completion_tokens"] == 1
    assert payloads[2] == "[DONE]"
    for p in payloads[:2]:
        ChatCompletionChunk.model_validate(p)


def test_completed_with_incomplete_status_and_tool_calls_is_length() -> None:
    translator = ChatStreamTranslator(model="m", include_usage=False, completion_id="c", created=1)
    translator.feed(
        "response.output_item.added",
        {
            "output_index": 0,
            "item": {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f"},
        },
    )
    translator.feed(
        "response.incomplete",
        {"response": {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}},
    )
    assert translator.finish_reason == "length"


def test_stream_cut_without_terminal_event_ends_with_an_error_not_done() -> None:
    fixture = load("plain_text")
    translator = ChatStreamTranslator(model="m", include_usage=True, completion_id="c", created=1)
    for etype, data in events_of(fixture)[:6]:
        translator.feed(etype, data)
    tail = translator.finish()
    assert decode_sse(tail) == [{"error": translator.error}]
    assert translator.error is not None and translator.error["code"] == "stream_interrupted"
    assert DONE_LINE not in tail
    assert translator.feed(*events_of(fixture)[-1]) == []  # nothing after the end


def test_error_event_becomes_error_chunk() -> None:
    translator = ChatStreamTranslator(model="m", include_usage=True, completion_id="c", created=1)
    out = decode_sse(
        translator.feed(
            "error",
            {"type": "error", "code": "rate_limit_exceeded", "message": "Rate limit reached", "param": None},
        )
    )
    assert out == [
        {
            "error": {
                "message": "Rate limit reached",
                "type": "rate_limit_exceeded",
                "code": "rate_limit_exceeded",
                "param": None,
            }
        }
    ]


def test_arguments_and_text_sent_only_at_done_are_not_lost_nor_doubled() -> None:
    translator = ChatStreamTranslator(model="m", include_usage=False, completion_id="c", created=1)
    item = {"type": "function_call", "id": "fc_9", "call_id": "call_9", "name": "f", "arguments": ""}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.output_item.added", {"output_index": 0, "item": item}),
        ("response.function_call_arguments.done", {"item_id": "fc_9", "output_index": 0, "arguments": "{}"}),
        ("response.output_item.done", {"output_index": 0, "item": {**item, "arguments": "{}"}}),
        ("response.output_text.done", {"item_id": "msg_1", "content_index": 0, "text": "late text"}),
        ("response.completed", {"response": {"status": "completed"}}),
    ]
    streamed = [p for etype, data in events for p in decode_sse(translator.feed(etype, data))]
    deltas = [p["choices"][0]["delta"] for p in streamed if p != "[DONE]" and p["choices"]]
    arguments = [d["tool_calls"][0]["function"].get("arguments") for d in deltas if "tool_calls" in d]
    assert arguments == ["", "{}"]
    assert [d["content"] for d in deltas if d.get("content")] == ["late text"]
    completion = assemble_chat_completion(events, model="m", completion_id="c", created=1)
    message = completion["choices"][0]["message"]
    assert message["tool_calls"][0]["function"]["arguments"] == "{}"
    assert message["content"] == "late text"
    assert "usage" not in completion
    ChatCompletion.model_validate(completion)


def test_feed_state_does_not_grow_with_stream_length() -> None:
    translator = ChatStreamTranslator(model="m", include_usage=False, completion_id="c", created=1)
    translator.feed(
        "response.output_item.added",
        {"output_index": 0, "item": {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "f"}},
    )
    for _ in range(5000):
        translator.feed("response.output_text.delta", {"item_id": "msg_1", "content_index": 0, "delta": "x"})
        translator.feed("response.function_call_arguments.delta", {"item_id": "fc_1", "delta": "y"})
    assert len(translator._text_streamed) == 1
    assert len(translator._calls) == 2  # one call, indexed by item id and by output index


# --- non-streaming -----------------------------------------------------------------------------


def test_assemble_reasoning_completion() -> None:
    completion = assemble_chat_completion(
        events_of(load("reasoning")), model="gpt-5.5", completion_id="c1", created=5
    )
    parsed = ChatCompletion.model_validate(completion)
    assert parsed.choices[0].message.content == "391 = 17 × 23."
    assert completion["choices"][0]["message"]["reasoning_content"].startswith("**Considering")
    assert parsed.usage is not None and parsed.usage.completion_tokens_details is not None
    assert parsed.usage.completion_tokens_details.reasoning_tokens == 384


def test_assemble_raises_on_in_band_failure_and_on_a_cut_stream() -> None:
    with pytest.raises(ResponsesStreamError) as failed:
        assemble_chat_completion(
            events_of(load("usage_limited_failed")), model="m", completion_id="c", created=1
        )
    assert failed.value.error["code"] == "usage_limit_reached"
    with pytest.raises(ResponsesStreamError) as cut:
        assemble_chat_completion(events_of(load("plain_text"))[:-1], model="m", completion_id="c", created=1)
    assert cut.value.error["code"] == "stream_interrupted"


def test_final_response_object_restores_empty_output_from_items() -> None:
    events = events_of(load("reasoning"))
    etype, completed = events[-1]
    emptied = {**completed, "response": {**completed["response"], "output": []}}
    final = final_response_object([*events[:-1], (etype, emptied)])
    assert final is not None
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["output"] == completed["response"]["output"]
    validate_response(final)
    assert emptied["response"]["output"] == []  # input untouched


def test_final_response_object_none_without_terminal_event() -> None:
    assert final_response_object(events_of(load("plain_text"))[:-1]) is None
    failed = final_response_object(events_of(load("usage_limited_failed")))
    assert failed is not None and failed["status"] == "failed"


# --- request mapping ---------------------------------------------------------------------------


def test_tools_request_mapping() -> None:
    body = chat_request_to_responses(load("tools_multi_turn")["chat_request"])
    assert body["instructions"] == "Use tools for facts."
    assert body["tools"][0] == {
        "type": "function",
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": False,
    }
    assert body["tools"][1]["strict"] is True
    assert [item.get("role", item["type"]) for item in body["input"]] == [
        "user",
        "function_call",
        "function_call_output",
        "assistant",
        "developer",
        "user",
    ]
    assert body["input"][1] == {
        "type": "function_call",
        "call_id": "call_Ab12",
        "name": "get_weather",
        "arguments": '{"city":"Oslo"}',
    }
    assert body["input"][2] == {
        "type": "function_call_output",
        "call_id": "call_Ab12",
        "output": '{"temp_c": -3, "sky": "snow"}',
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ({"type": "function", "function": {"name": "f"}}, {"type": "function", "name": "f"}),
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "g"}}],
                },
            },
            {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "g"}]},
        ),
    ],
)
def test_tool_choice_mapping(choice: Any, expected: Any) -> None:
    body = chat_request_to_responses({"model": "m", "messages": [], "tool_choice": choice})
    assert body["tool_choice"] == expected


def test_response_format_json_object_and_max_tokens_precedence() -> None:
    body = chat_request_to_responses(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_object"},
            "max_tokens": 10,
            "max_completion_tokens": 20,
            "reasoning_effort": "none",
        }
    )
    assert body["text"] == {"format": {"type": "json_object"}}
    assert body["max_output_tokens"] == 20
    assert body["reasoning"] == {"effort": "none"}


def test_dropped_chat_parameters_are_reported() -> None:
    body, dropped = chat_request_to_responses_with_dropped(
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}],
                }
            ],
            "n": 2,
            "logprobs": True,
            "stop": ["\n"],
            "presence_penalty": 0.5,
            "logit_bias": {"50256": -100},
            "modalities": ["text", "audio"],
            "stream_options": {"include_usage": True},
            "tools": [{"type": "custom", "custom": {"name": "grammar"}}],
        }
    )
    assert dropped == [
        "messages[].content[input_audio]",
        "tools[custom]",
        "n",
        "logprobs",
        "presence_penalty",
        "stop",
        "logit_bias",
        "modalities",
        "stream_options",
    ]
    assert set(dropped) <= set(CHAT_DROPPED_PARAMETERS)
    assert body["tools"] == [] and body["input"] == [{"type": "message", "role": "user", "content": []}]


def test_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="role"):
        chat_request_to_responses({"model": "m", "messages": [{"role": "robot", "content": "x"}]})


# --- normalize_for_chatgpt -----------------------------------------------------------------------

CLIENT_BODIES: list[dict[str, Any]] = [
    {"model": "gpt-5.5", "input": "Hello"},
    {
        "model": "gpt-5.5",
        "instructions": "Be brief.",
        "input": [
            {"type": "message", "role": "system", "content": "rules"},
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "x"}],
            },
            {"type": "item_reference", "id": "rs_1"},
            {"type": "function_call_output", "call_id": "call_1", "output": "ok"},
        ],
        "include": ["file_search_call.results", "reasoning.encrypted_content"],
        "max_output_tokens": 100,
        "temperature": 0.3,
        "top_p": 0.9,
        "metadata": {"a": "b"},
        "user": "u",
        "service_tier": "auto",
        "truncation": "auto",
        "previous_response_id": "resp_1",
        "prompt_cache_retention": "24h",
        "prompt_cache_key": "k",
        "store": True,
        "stream": False,
        "tools": [{"type": "web_search_preview"}],
        "reasoning": {"effort": "low", "summary": "auto"},
        "text": {"verbosity": "low"},
    },
    {"model": "gpt-5.5", "input": [], "service_tier": "priority", "client_metadata": {"x": "1"}},
]


@pytest.mark.parametrize("body", CLIENT_BODIES)
def test_normalize_is_idempotent_and_never_mutates(body: dict[str, Any]) -> None:
    original = copy.deepcopy(body)
    once = normalize_for_chatgpt(body, default_instructions=DEFAULT_INSTRUCTIONS)
    assert body == original
    snapshot = copy.deepcopy(once)
    twice, dropped_again = normalize_for_chatgpt_with_dropped(once, default_instructions="other")
    assert once == snapshot
    assert twice == once and dropped_again == []
    assert once is not body
    assert once["stream"] is True and once["store"] is False
    assert isinstance(once["instructions"], str) and isinstance(once["input"], list)
    assert once["include"].count("reasoning.encrypted_content") == 1
    assert set(once) <= CHATGPT_ACCEPTED_FIELDS
    RESPONSES_REQUEST.validate_python(sdk_view(once))


def test_normalize_details() -> None:
    body, dropped = normalize_for_chatgpt_with_dropped(CLIENT_BODIES[1], default_instructions="D")
    assert body == {
        "model": "gpt-5.5",
        "instructions": "Be brief.",
        "input": [
            {"type": "message", "role": "developer", "content": "rules"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "x"}]},
            {"type": "function_call_output", "call_id": "call_1", "output": "ok"},
        ],
        "include": ["file_search_call.results", "reasoning.encrypted_content"],
        "prompt_cache_key": "k",
        "store": False,
        "stream": True,
        "tools": [{"type": "web_search"}],
        "reasoning": {"effort": "low", "summary": "auto"},
        "text": {"verbosity": "low"},
    }
    assert dropped == [
        "max_output_tokens",
        "temperature",
        "top_p",
        "metadata",
        "user",
        "truncation",
        "previous_response_id",
        "prompt_cache_retention",
        "store",
        "service_tier",
        "input[].id",
        "input[item_reference]",
    ]
    assert set(dropped) <= set(CHATGPT_DROPPED_REASONS)
    assert dropped_fields(CLIENT_BODIES[1]) == dropped


def test_normalize_string_input_and_default_instructions() -> None:
    body = normalize_for_chatgpt({"model": "m", "input": "Hello"}, default_instructions="D")
    assert body["input"] == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]}
    ]
    assert body["instructions"] == "D"
    assert body["include"] == ["reasoning.encrypted_content"]
    kept = normalize_for_chatgpt({"model": "m", "input": [], "service_tier": "priority"})
    assert kept["service_tier"] == "priority" and kept["instructions"] == ""


def test_function_call_seen_only_at_item_done_is_announced_whole() -> None:
    item = {"type": "function_call", "id": "fc_7", "call_id": "call_7", "name": "f", "arguments": '{"a":1}'}
    completion = assemble_chat_completion(
        [
            ("response.output_item.done", {"output_index": 0, "item": item}),
            ("response.completed", {"response": {"status": "completed"}}),
        ],
        model="m",
        completion_id="c",
        created=1,
    )
    assert completion["choices"][0]["message"]["tool_calls"] == [
        {"id": "call_7", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    ]
    assert completion["choices"][0]["finish_reason"] == "tool_calls"

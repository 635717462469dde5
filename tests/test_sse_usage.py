import json

import pytest
from accountpool.models import FailureClass
from accountpool.upstream.sse_usage import (
    SseScanner,
    StreamWatcher,
    TokenUsage,
    usage_from_dict,
    usage_from_json_body,
)

RESPONSES_USAGE = {
    "input_tokens": 1200,
    "input_tokens_details": {"cached_tokens": 1024},
    "output_tokens": 300,
    "output_tokens_details": {"reasoning_tokens": 128},
    "total_tokens": 1500,
}
EXPECTED = TokenUsage(1200, 1024, 300, 128, 1500)


def sse(event: str | None, data: dict | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def responses_stream(*, fail: dict | None = None) -> bytes:
    created = {
        "type": "response.created",
        "response": {"id": "r1", "model": "gpt-5.5", "status": "in_progress"},
    }
    parts = [
        sse("response.created", created),
        sse("response.in_progress", {"type": "response.in_progress", "response": {"id": "r1"}}),
    ]
    if fail is not None:
        parts.append(
            sse("response.failed", {"type": "response.failed", "response": {"id": "r1", "error": fail}})
        )
        return b"".join(parts)
    parts += [
        sse("response.output_item.added", {"type": "response.output_item.added", "item": {}}),
        sse("response.output_text.delta", {"type": "response.output_text.delta", "delta": "hi"}),
        sse(
            "response.completed",
            {"type": "response.completed", "response": {"model": "gpt-5.5-2025", "usage": RESPONSES_USAGE}},
        ),
    ]
    return b"".join(parts)


# ------------------------------------------------------------------ scanner


def test_scanner_basic_and_multiline_and_comments():
    s = SseScanner()
    events = s.feed(b": keepalive\n\nevent: a\ndata: 1\ndata: 2\n\ndata:x\n\nid: 5\nretry: 10\n\n")
    assert events == [("a", b"1\n2"), ("message", b"x")]


def test_scanner_crlf_and_split_everywhere():
    raw = b"event: a\r\ndata: one\r\n\r\nevent: b\r\ndata: two\r\n\r\n"
    for step in range(1, len(raw)):
        s = SseScanner()
        out = []
        for i in range(0, len(raw), step):
            out += s.feed(raw[i : i + step])
        assert out == [("a", b"one"), ("b", b"two")], step


def test_scanner_keeps_incomplete_tail():
    s = SseScanner()
    assert s.feed(b'data: {"a":') == []
    assert s.feed(b" 1}\n") == []
    assert s.feed(b"\ndata: next") == [("message", b'{"a": 1}')]
    assert s.feed(b"\n\n") == [("message", b"next")]


def test_scanner_large_event_in_many_chunks():
    s = SseScanner()
    body = b"data: " + b"x" * 100_000 + b"\n\n"
    out = []
    for i in range(0, len(body), 1000):
        out += s.feed(body[i : i + 1000])
    assert out == [("message", b"x" * 100_000)]


def test_scanner_separator_straddles_chunks():
    s = SseScanner()
    assert s.feed(b"data: a\n") == []
    assert s.feed(b"\ndata: b\n") == [("message", b"a")]
    assert s.feed(b"\n") == [("message", b"b")]


# ------------------------------------------------------------------ usage


def test_usage_from_dict_responses_and_chat():
    assert usage_from_dict(RESPONSES_USAGE) == EXPECTED
    chat = {
        "prompt_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens": 5,
        "completion_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 15,
    }
    assert usage_from_dict(chat) == TokenUsage(10, 4, 5, 2, 15)


def test_usage_from_dict_partial_and_odd():
    assert usage_from_dict({"input_tokens": 3, "output_tokens": 4}) == TokenUsage(3, None, 4, None, 7)
    assert (
        usage_from_dict({"input_tokens": "3", "output_tokens": True, "input_tokens_details": None})
        == TokenUsage()
    )


def test_usage_from_json_body():
    assert usage_from_json_body(json.dumps({"id": "x", "usage": RESPONSES_USAGE}).encode()) == EXPECTED
    assert usage_from_json_body(json.dumps({"response": {"usage": RESPONSES_USAGE}}).encode()) == EXPECTED
    assert usage_from_json_body(b'{"id": "x"}') is None
    assert usage_from_json_body(b'{"usage": null}') is None
    assert usage_from_json_body(b'not json but "usage": {"input_tokens": 5}') == TokenUsage(input_tokens=5)


def test_usage_from_huge_body_is_searched_not_parsed():
    filler = "y" * (9 * 1024 * 1024)
    body = (
        '{"output": [{"text": "'
        + filler
        + ' \\"usage\\": {}"}], "usage": '
        + json.dumps(RESPONSES_USAGE)
        + ', "user": null}'
    ).encode()
    assert usage_from_json_body(body) == EXPECTED


# ------------------------------------------------------------------ watcher


def feed_all(w: StreamWatcher, raw: bytes, step: int) -> list:
    out = []
    for i in range(0, len(raw), step):
        out += w.feed(raw[i : i + step])
    return out


@pytest.mark.parametrize("step", [1, 7, 64, 100_000])
def test_watcher_responses_success(step):
    w = StreamWatcher()
    events = feed_all(w, responses_stream(), step)
    assert [e[0] for e in events][:2] == ["response.created", "response.in_progress"]
    assert w.usage == EXPECTED
    assert w.first_content_seen and w.saw_terminal
    assert w.inband_error is None
    assert w.model == "gpt-5.5-2025"


def test_watcher_holdback_signals():
    w = StreamWatcher()
    raw = responses_stream()
    created_end = raw.index(b"event: response.output_item.added")
    w.feed(raw[:created_end])
    assert w.only_metadata_seen and not w.first_content_seen
    assert w.model == "gpt-5.5"
    w.feed(raw[created_end:])
    assert not w.only_metadata_seen


def test_watcher_inband_failure_before_content():
    w = StreamWatcher()
    w.feed(
        responses_stream(fail={"code": "usage_limit_reached", "message": "The usage limit has been reached"})
    )
    assert w.inband_error == (FailureClass.QUOTA_EXCEEDED, "The usage limit has been reached")
    assert not w.first_content_seen
    assert w.saw_terminal
    assert not w.only_metadata_seen


def test_watcher_error_event():
    w = StreamWatcher()
    w.feed(sse("response.created", {"type": "response.created", "response": {}}))
    w.feed(
        sse(
            "error",
            {
                "type": "error",
                "code": "rate_limit_exceeded",
                "message": "Rate limit; key sk-abcdef1234567890XYZ",
            },
        )
    )
    assert w.inband_error is not None
    cls, brief = w.inband_error
    assert cls == FailureClass.RATE_LIMITED
    assert "sk-abcdef" not in brief


def test_watcher_first_error_wins():
    w = StreamWatcher()
    w.feed(
        sse("error", {"code": "rate_limit_exceeded"}) + sse("response.failed", {"response": {"error": {}}})
    )
    assert w.inband_error is not None and w.inband_error[0] == FailureClass.RATE_LIMITED


def test_watcher_type_from_data_when_no_event_line():
    w = StreamWatcher()
    w.feed(sse(None, {"type": "response.created", "response": {}}))
    assert w.only_metadata_seen
    w.feed(sse(None, {"type": "response.completed", "response": {"usage": RESPONSES_USAGE}}))
    assert w.usage == EXPECTED and w.saw_terminal


def test_watcher_incomplete_has_usage():
    w = StreamWatcher()
    w.feed(
        sse(
            "response.incomplete", {"type": "response.incomplete", "response": {"usage": {"input_tokens": 9}}}
        )
    )
    assert w.usage == TokenUsage(input_tokens=9) and w.saw_terminal


def test_watcher_chat_completions_stream():
    w = StreamWatcher()
    chunk = {"id": "c", "model": "gpt-4o-mini", "choices": [{"delta": {"content": "hi"}}], "usage": None}
    w.feed(sse(None, chunk))
    assert w.first_content_seen and w.usage is None and w.model == "gpt-4o-mini"
    final = {
        "id": "c",
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    w.feed(sse(None, final) + b"data: [DONE]\n\n")
    assert w.usage == TokenUsage(3, None, 2, None, 5)
    assert w.saw_terminal


def test_watcher_chat_error_chunk():
    w = StreamWatcher()
    w.feed(sse(None, {"error": {"code": "insufficient_quota", "message": "You exceeded your current quota"}}))
    assert w.inband_error == (FailureClass.QUOTA_EXCEEDED, "You exceeded your current quota")
    assert not w.first_content_seen


def test_watcher_malformed_terminal_does_not_raise():
    w = StreamWatcher()
    w.feed(b"event: response.completed\ndata: {not json\n\nevent: response.failed\ndata: []\n\n")
    assert w.saw_terminal
    assert w.usage is None
    assert w.inband_error is not None and w.inband_error[0] == FailureClass.UPSTREAM_ERROR


def test_watcher_cheap_on_deltas(monkeypatch):
    import accountpool.upstream.sse_usage as mod

    calls = []
    real = mod.json.loads
    monkeypatch.setattr(mod.json, "loads", lambda *a, **k: calls.append(1) or real(*a, **k))
    w = StreamWatcher()
    delta = sse("response.output_text.delta", {"type": "response.output_text.delta", "delta": "x"})
    w.feed(delta * 500)
    assert calls == []
    assert w.events_seen == 500


def delta(text: str) -> bytes:
    return sse("response.output_text.delta", {"type": "response.output_text.delta", "delta": text})


@pytest.mark.parametrize("step", [1, 7, 64, 100_000])
def test_watch_after_commit_sees_what_feed_sees(step):
    """The router's after-commit `watch` may pass delta-only chunks over; everything that matters still lands."""
    head = responses_stream()[: responses_stream().index(b"event: response.output_text.delta")]
    tail = (delta("an error in the text is content") + delta("more") * 3 + delta("x") + sse(
        "response.completed", {"type": "response.completed",
                               "response": {"model": "gpt-5.5-2025", "usage": RESPONSES_USAGE}}))
    w = StreamWatcher()
    feed_all(w, head + delta("first"), 100_000)  # the read-ahead up to the first content
    for i in range(0, len(tail), step):
        w.watch(tail[i : i + step])
    assert w.usage == EXPECTED and w.saw_terminal and w.inband_error is None
    assert w.model == "gpt-5.5-2025"


def test_watch_catches_a_failure_coalesced_with_deltas_and_skips_only_whole_deltas():
    from accountpool.upstream.sse_usage import _only_deltas

    assert _only_deltas(delta("a")) and _only_deltas(delta("a") + delta("b"))
    assert not _only_deltas(delta("a")[:-1])  # ends mid-event
    assert not _only_deltas(delta("a") + sse("error", {"type": "error", "message": "x"}))
    assert not _only_deltas(sse(None, {"type": "response.output_text.delta", "delta": "a"}))  # data-only stream
    assert not _only_deltas(delta("a").replace(b"\n", b"\r\n"))

    w = StreamWatcher()
    w.feed(responses_stream()[: responses_stream().index(b"event: response.completed")])
    assert w.first_content_seen and w.model == "gpt-5.5"
    w.watch(delta("partial")[:20])  # the scanner now holds half an event: the next chunk must be parsed
    w.watch(delta("partial")[20:] + delta("b"))
    failed = sse("response.failed", {"type": "response.failed",
                                     "response": {"error": {"code": "server_error", "message": "boom"}}})
    w.watch(delta("c") + failed)
    assert w.saw_terminal and w.inband_error is not None


def test_watch_parses_a_delta_chunk_that_follows_half_an_event():
    w = StreamWatcher()
    w.feed(responses_stream()[: responses_stream().index(b"event: response.completed")])
    w.watch(b"data: {}\n")  # half an event (its blank line is still to come) ...
    assert not w._scanner.idle
    w.watch(delta("b"))  # ... so this chunk, whole deltas by itself, continues it and must go through the scanner
    assert w._scanner.idle

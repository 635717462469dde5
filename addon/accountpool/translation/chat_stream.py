"""The backend's Responses event stream → a Chat Completions stream, one event at a time (issue 8).

Pure (no I/O, no clock, no randomness): ids and timestamps come in as parameters, so the relay owns
them and tests are reproducible. Events arrive as already parsed `(event_type, data)` tuples from the
SSE scanner (`accountpool.upstream.sse_usage`); the translator keeps O(1) state per event so a long
stream costs no more per event than a short one.

Decisions (mirrored in the README):

- The stream translator emits the role chunk lazily, with the first content or terminal event:
  metadata events (`response.created`, `response.in_progress`) produce no bytes, so the relay can
  feed them and still fail over to another account on an in-band error before anything reached
  the client.
- An in-band failure (`response.failed`, `error`) or a stream that ends without a terminal event
  produces an OpenAI-shaped `data: {"error": …}` chunk and **no** `[DONE]`: the OpenAI SDKs raise
  on such a chunk, and a naive client must not mistake a failed stream for a clean end.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# ---------------------------------------------------------------------------------------------
# Responses events → Chat Completions stream / object
# ---------------------------------------------------------------------------------------------

DONE_LINE = b"data: [DONE]\n\n"

TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
"""Events after which the backend sends nothing more that matters."""


class ResponsesStreamError(Exception):
    """The upstream stream failed in-band or ended early; `.error` is an OpenAI-shaped error
    object (`{"message", "type", "code", "param"}`) the relay can return or classify."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message") or "upstream stream failed")
        self.error = error


def chat_usage(usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Responses usage names → Chat Completions usage names (same numbers)."""
    if not usage:
        return None
    prompt = int(usage.get("input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    cached = int((usage.get("input_tokens_details") or {}).get("cached_tokens") or 0)
    reasoning = int((usage.get("output_tokens_details") or {}).get("reasoning_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def _error_from_event(event_type: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI-shaped error object from `response.failed` or `error` data."""
    if event_type == "response.failed":
        err = (data.get("response") or {}).get("error") or {}
    else:
        err = data.get("error") if isinstance(data.get("error"), dict) else data
    code = err.get("code") or err.get("type") or "upstream_error"
    return {
        "message": err.get("message") or "The upstream response failed.",
        "type": err.get("type") if err.get("type") not in (None, "error") else code,
        "code": code,
        "param": err.get("param"),
    }


STREAM_INTERRUPTED_ERROR: dict[str, Any] = {
    "message": "The upstream stream ended before the response was complete.",
    "type": "stream_interrupted",
    "code": "stream_interrupted",
    "param": None,
}


def _sse(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


class _ToolCall:
    """Bookkeeping for one function call: its chat index and whether arguments were streamed."""

    __slots__ = ("index", "streamed")

    def __init__(self, index: int) -> None:
        self.index = index
        self.streamed = False


class ChatStreamTranslator:
    """Responses SSE events → Chat Completions SSE chunks, one event at a time.

    State is a handful of counters and a dict keyed by function-call item, so `feed` does
    constant work per event whatever the stream's length. `feed` returns the bytes to send now;
    after a terminal event it returns nothing more. Call `finish()` when the upstream closed:
    it returns an error chunk if no terminal event was seen (docs/BEHAVIOUR.md §11: a cut stream must end with
    an explicit error), else nothing.
    """

    def __init__(self, *, model: str, include_usage: bool, completion_id: str, created: int) -> None:
        self.model = model
        self.include_usage = include_usage
        self.completion_id = completion_id
        self.created = created
        self.usage: dict[str, Any] | None = None
        """Chat-style usage, set by the terminal event (None if the backend sent none)."""
        self.finish_reason: str | None = None
        self.error: dict[str, Any] | None = None
        """The OpenAI-shaped error if the stream failed in-band or was cut."""
        self.finished = False
        self._role_sent = False
        self._calls: dict[str, _ToolCall] = {}
        """Function calls by item id and by `#output_index` (either may identify a delta)."""
        self._call_count = 0
        self._text_streamed: set[tuple[str, int]] = set()
        self._reasoning_key: tuple[str, int] | None = None

    # -- chunk builders -----------------------------------------------------------------------
    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    def _with_role(self, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self._role_sent:
            return chunks
        self._role_sent = True
        return [self._chunk({"role": "assistant", "content": ""}), *chunks]

    def _call_for(self, data: Mapping[str, Any]) -> _ToolCall | None:
        item_id = data.get("item_id")
        if item_id is not None and item_id in self._calls:
            return self._calls[item_id]
        return self._calls.get(f"#{data.get('output_index')}")

    # -- the translation ----------------------------------------------------------------------
    def feed_chunks(self, event_type: str, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Like `feed`, but returns chunk objects rather than bytes, and no `[DONE]` marker (the
        non-streaming assembler consumes these). A failure is returned as `{"error": …}`."""
        if self.finished:
            return []
        if event_type == "response.output_text.delta":
            delta = data.get("delta") or ""
            self._text_streamed.add((str(data.get("item_id")), int(data.get("content_index") or 0)))
            return self._with_role([self._chunk({"content": delta})]) if delta else []
        if event_type == "response.output_text.done":
            key = (str(data.get("item_id")), int(data.get("content_index") or 0))
            text = data.get("text") or ""
            if key in self._text_streamed or not text:
                return []
            self._text_streamed.add(key)
            return self._with_role([self._chunk({"content": text})])
        if event_type == "response.refusal.delta":
            delta = data.get("delta") or ""
            return self._with_role([self._chunk({"refusal": delta})]) if delta else []
        if event_type in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            delta = data.get("delta") or ""
            if not delta:
                return []
            index = data.get("summary_index", data.get("content_index", 0))
            key = (str(data.get("item_id")), int(index or 0))
            if self._reasoning_key is not None and key != self._reasoning_key:
                delta = "\n\n" + delta  # keep separate summary parts readable as one text
            self._reasoning_key = key
            return self._with_role([self._chunk({"reasoning_content": delta})])
        if event_type == "response.output_item.added":
            item = data.get("item") or {}
            if item.get("type") != "function_call":
                return []
            call = _ToolCall(self._call_count)
            self._call_count += 1
            self._calls[str(item.get("id"))] = call
            self._calls[f"#{data.get('output_index')}"] = call
            args = item.get("arguments") or ""
            call.streamed = bool(args)
            tool_delta = {
                "index": call.index,
                "id": item.get("call_id") or item.get("id"),
                "type": "function",
                "function": {"name": item.get("name", ""), "arguments": args},
            }
            return self._with_role([self._chunk({"tool_calls": [tool_delta]})])
        if event_type == "response.function_call_arguments.delta":
            call = self._call_for(data)
            delta = data.get("delta") or ""
            if call is None or not delta:
                return []
            call.streamed = True
            return self._with_role(
                [self._chunk({"tool_calls": [{"index": call.index, "function": {"arguments": delta}}]})]
            )
        if event_type in ("response.function_call_arguments.done", "response.output_item.done"):
            # Some upstreams skip the deltas and only send the whole arguments at the end.
            if event_type == "response.output_item.done":
                item = data.get("item") or {}
                if item.get("type") != "function_call":
                    return []
                call = self._calls.get(str(item.get("id"))) or self._calls.get(f"#{data.get('output_index')}")
                if call is None:  # the call was never announced: announce it whole now
                    return self.feed_chunks("response.output_item.added", data)
                args = item.get("arguments") or ""
            else:
                call = self._call_for(data)
                args = data.get("arguments") or ""
            if call is None or call.streamed or not args:
                return []
            call.streamed = True
            return self._with_role(
                [self._chunk({"tool_calls": [{"index": call.index, "function": {"arguments": args}}]})]
            )
        if event_type in ("response.completed", "response.incomplete"):
            self.finished = True
            response = data.get("response") or {}
            self.usage = chat_usage(response.get("usage"))
            if event_type == "response.incomplete" or response.get("status") == "incomplete":
                reason = (response.get("incomplete_details") or {}).get("reason")
                self.finish_reason = "content_filter" if reason == "content_filter" else "length"
            elif self._call_count:
                self.finish_reason = "tool_calls"
            else:
                self.finish_reason = "stop"
            chunks = self._with_role([self._chunk({}, self.finish_reason)])
            if self.include_usage and self.usage is not None:
                chunks.append({**self._chunk({}), "choices": [], "usage": self.usage})
            return chunks
        if event_type in ("response.failed", "error"):
            self.finished = True
            self.error = _error_from_event(event_type, data)
            if event_type == "response.failed":
                self.usage = chat_usage((data.get("response") or {}).get("usage"))
            return [{"error": self.error}]
        return []

    def feed(self, event_type: str, data: Mapping[str, Any]) -> list[bytes]:
        """Chat Completions SSE bytes (`data: {…}\\n\\n`) for one Responses event; a successful
        terminal event is followed by `data: [DONE]`, a failure is not."""
        out = [_sse(c) for c in self.feed_chunks(event_type, data)]
        if out and self.finished and self.error is None:
            out.append(DONE_LINE)
        return out

    def finish(self) -> list[bytes]:
        """Bytes to send when the upstream closed: nothing after a terminal event, else an
        explicit `stream_interrupted` error chunk (no `[DONE]`, the stream did not succeed)."""
        if self.finished:
            return []
        self.finished = True
        self.error = dict(STREAM_INTERRUPTED_ERROR)
        return [_sse({"error": self.error})]

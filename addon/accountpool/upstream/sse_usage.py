"""Watch a streamed response as it passes: token usage, in-band failures, commit point (docs/BEHAVIOUR.md §11, §12).

This runs on every chunk of every streamed request, so the common path is byte comparisons
only: JSON is parsed for the handful of events that can carry usage or a failure, never for
the many `*.delta` events. Nothing here holds bytes back from the client; the relay decides
that, using `StreamWatcher.only_metadata_seen` and `inband_error`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from accountpool.models import FailureClass
from accountpool.upstream.classify import classify_inband_event, error_brief

FULL_PARSE_LIMIT = 8 * 1024 * 1024
"""Larger bodies are searched for their `usage` object instead of parsed whole."""

METADATA_EVENTS = frozenset({"response.created", "response.in_progress"})
"""Events a client can do without for a while: the relay may hold them back until content or an error."""
USAGE_EVENTS = frozenset({"response.completed", "response.done", "response.incomplete"})
FAILURE_EVENTS = frozenset({"response.failed", "error"})
TERMINAL_EVENTS = USAGE_EVENTS | FAILURE_EVENTS
"""Events after which a stream may end cleanly (`[DONE]` too, for chat completions)."""

_USAGE_KEY = re.compile(rb'"usage"\s*:\s*\{')
_MODEL_VALUE = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
_LEADING_TYPE = re.compile(rb'\{"type"\s*:\s*"([^"\\]{1,100})"')
_DECODER = json.JSONDecoder()


class SseScanner:
    """Split a byte stream into complete SSE events, keeping only the incomplete tail."""

    __slots__ = ("_parts", "_pending_cr")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._pending_cr = False

    @property
    def idle(self) -> bool:
        """No part of an event is pending: the next chunk starts at an event boundary."""
        return not self._parts and not self._pending_cr

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        """Return the events completed by this chunk as (event name, data) pairs.

        The name defaults to "message" (as in the SSE spec); multi-line data is joined with "\\n";
        comment lines and events without data are dropped.
        """
        if self._pending_cr:
            chunk, self._pending_cr = b"\r" + chunk, False
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):  # may be the first half of a CRLF split across chunks
                chunk, self._pending_cr = chunk[:-1], True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if not chunk:
            return []
        if self._parts:
            # A separator is in the new chunk or straddles the boundary; otherwise just append,
            # so a large event arriving in many chunks is joined once, not once per chunk.
            if b"\n\n" not in chunk and not (self._parts[-1].endswith(b"\n") and chunk.startswith(b"\n")):
                self._parts.append(chunk)
                return []
            self._parts.append(chunk)
            buf = b"".join(self._parts)
            self._parts = []
        else:
            buf = chunk
        end = buf.rfind(b"\n\n")
        if end < 0:
            if buf:
                self._parts.append(buf)
            return []
        if end + 2 < len(buf):
            self._parts.append(buf[end + 2 :])
        return [ev for block in buf[:end].split(b"\n\n") if (ev := _parse_block(block)) is not None]


def _parse_block(block: bytes) -> tuple[str, bytes] | None:
    name = "message"
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line[0] == 0x3A:  # empty or ":" comment
            continue
        field, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace")
    if not data:
        return None
    return name, data[0] if len(data) == 1 else b"\n".join(data)


@dataclass
class TokenUsage:
    """The five token counts a metrics row records (docs/BEHAVIOUR.md §13)."""

    input_tokens: int | None = None
    cached_input_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    total_tokens: int | None = None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _first(*values: Any) -> int | None:
    return next((c for v in values if (c := _count(v)) is not None), None)


def _detail(usage: dict, *keys: str) -> Any:
    for key in keys:
        details = usage.get(key)
        if isinstance(details, dict):
            return details
    return {}


def usage_from_dict(usage: dict) -> TokenUsage:
    """Token counts from a Responses `usage` object or a Chat Completions one."""
    inp = _detail(usage, "input_tokens_details", "prompt_tokens_details")
    out = _detail(usage, "output_tokens_details", "completion_tokens_details")
    result = TokenUsage(
        input_tokens=_first(usage.get("input_tokens"), usage.get("prompt_tokens")),
        cached_input_tokens=_first(inp.get("cached_tokens")),
        output_tokens=_first(usage.get("output_tokens"), usage.get("completion_tokens")),
        reasoning_tokens=_first(out.get("reasoning_tokens")),
        total_tokens=_first(usage.get("total_tokens")),
    )
    if result.total_tokens is None and result.input_tokens is not None and result.output_tokens is not None:
        result.total_tokens = result.input_tokens + result.output_tokens
    return result


def _usage_or_none(usage: Any) -> TokenUsage | None:
    if not isinstance(usage, dict):
        return None
    result = usage_from_dict(usage)
    return None if result == TokenUsage() else result


def _find_usage(body: bytes) -> TokenUsage | None:
    """Decode only the last `"usage": {…}` object (top-level usage follows the output)."""
    end = len(body)
    while (pos := body.rfind(b'"usage"', 0, end)) >= 0:
        if match := _USAGE_KEY.match(body, pos):
            start = match.end() - 1
            try:
                usage, _ = _DECODER.raw_decode(body[start : start + 65_536].decode("utf-8", "replace"))
            except ValueError:
                return None
            return _usage_or_none(usage)
        end = pos
    return None


def usage_from_json_body(body: bytes) -> TokenUsage | None:
    """Token usage of a non-streamed JSON response (`usage`, or `response.usage`)."""
    if b'"usage"' not in body:
        return None
    if len(body) <= FULL_PARSE_LIMIT:
        try:
            doc = json.loads(body)
        except ValueError:
            return _find_usage(body)
        if not isinstance(doc, dict):
            return None
        usage = doc.get("usage")
        if usage is None and isinstance(doc.get("response"), dict):
            usage = doc["response"].get("usage")
        return _usage_or_none(usage)
    return _find_usage(body)


def _only_deltas(chunk: bytes) -> bool:
    """Whether a chunk is whole events only, each named `*.delta` on its first line."""
    if not chunk.startswith(b"event: ") or not chunk.endswith(b"\n\n") or b"\r" in chunk:
        return False
    for event in chunk[:-2].split(b"\n\n"):
        end = event.find(b"\n")
        if not event.startswith(b"event: ") or end < 0 or event[end - 6:end] != b".delta":
            return False
    return True


def _json_dict(data: bytes) -> dict | None:
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _event_type(name: str, data: bytes) -> str:
    """The Responses event type: the `event:` line, or `"type"` when a server sends data lines only."""
    if name != "message" or not data.startswith(b'{"type"'):
        return name
    m = _LEADING_TYPE.match(data)
    return m.group(1).decode("utf-8", "replace") if m else name


class StreamWatcher:
    """Follow one SSE response (Responses or Chat Completions) chunk by chunk.

    Relay recipe for failover on in-band errors: while `only_metadata_seen`, buffer the raw
    chunks instead of forwarding them; when `inband_error` is set, drop the buffer and try the
    next account; otherwise, once content appears, forward the buffer unchanged and commit.
    """

    def __init__(self) -> None:
        self._scanner = SseScanner()
        self.usage: TokenUsage | None = None
        self.inband_error: tuple[FailureClass, str] | None = None
        self.first_content_seen = False
        self.saw_terminal = False
        self.model: str | None = None
        self.events_seen = 0

    @property
    def only_metadata_seen(self) -> bool:
        """True while nothing decisive arrived: hold-back is still possible and still useful."""
        return not self.first_content_seen and self.inband_error is None and not self.saw_terminal

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        """Scan a raw chunk; return the complete events it finished (name, data)."""
        events = self._scanner.feed(chunk)
        for name, data in events:
            self._observe(name, data)
        self.events_seen += len(events)
        return events

    def watch(self, chunk: bytes) -> None:
        """`feed` for the chunks after commit, which are nearly all deltas: a chunk of whole `*.delta` events only
        (by their `event:` lines) is passed over unparsed, about 2 µs an event saved on every token of every
        stream (a fleet of 5,000 streams carries 25,000 a second, benchmarks/README.md).

        What such a chunk could change is settled by then: content was seen and the model is known, and a delta
        carries no usage, no failure and no end. Anything else (other events, data-only streams such as Chat
        Completions, a chunk that ends mid-event or follows one) is parsed."""
        if self.first_content_seen and self.model is not None and self._scanner.idle and _only_deltas(chunk):
            return
        self.feed(chunk)

    def _observe(self, name: str, data: bytes) -> None:
        kind = _event_type(name, data)
        if kind in METADATA_EVENTS:
            if self.model is None and (m := _MODEL_VALUE.search(data)):
                self.model = m.group(1).decode("utf-8", "replace")
        elif kind in USAGE_EVENTS:
            self.first_content_seen = self.saw_terminal = True
            self._read_response(data)
        elif kind in FAILURE_EVENTS:
            self.saw_terminal = True
            self._read_failure(kind, _json_dict(data) or {})
        elif kind == "message":
            self._observe_chat(data)
        else:  # output items, deltas, and any event type we do not know: content
            self.first_content_seen = True

    def _read_response(self, data: bytes) -> None:
        doc = _json_dict(data)
        response = doc.get("response") if doc else None
        if not isinstance(response, dict):
            self.usage = _find_usage(data) or self.usage
            return
        self.usage = _usage_or_none(response.get("usage")) or self.usage
        if isinstance(response.get("model"), str):
            self.model = response["model"]

    def _read_failure(self, kind: str, doc: dict) -> None:
        cls = classify_inband_event(kind, doc)
        if cls is None:
            return
        response = doc.get("response")
        if isinstance(response, dict):
            self.usage = _usage_or_none(response.get("usage")) or self.usage
            err = response.get("error")
        else:
            err = doc.get("error", doc)
        brief = error_brief(None, json.dumps({"error": err})) if isinstance(err, dict) and err else kind
        if self.inband_error is None:
            self.inband_error = (cls, brief)

    def _observe_chat(self, data: bytes) -> None:
        if data == b"[DONE]":
            self.saw_terminal = True
            return
        if data.startswith(b'{"error"'):
            doc = _json_dict(data)
            if doc and isinstance(doc.get("error"), dict):
                self.saw_terminal = True
                self._read_failure("error", doc)
                return
        self.first_content_seen = True
        if self.model is None and (m := _MODEL_VALUE.search(data)):
            self.model = m.group(1).decode("utf-8", "replace")
        if b'"usage"' in data and b'"usage":null' not in data:
            doc = _json_dict(data)
            if doc:
                self.usage = _usage_or_none(doc.get("usage")) or self.usage

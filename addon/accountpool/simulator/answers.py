"""What the simulated model answers when nothing goes wrong, in each wire format.

One `build_answer` decides what the model "says" (deterministic: text and token counts derive from the
input); the Responses events, the Chat Completions chunks and objects, the model catalogs and the
`wham/usage` body are built from it, so every format agrees.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from accountpool.simulator.logins import Login
from accountpool.simulator.replies import sse_event
from accountpool.simulator.usage import Usage

MODELS = ("gpt-5.5", "gpt-5.4-mini")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _split(text: str, n: int) -> list[str]:
    n = max(1, min(n, len(text)))
    size, extra = divmod(len(text), n)
    out, pos = [], 0
    for i in range(n):
        step = size + (1 if i < extra else 0)
        out.append(text[pos : pos + step])
        pos += step
    return out


@dataclass
class _Answer:
    """What the model "says": shared by every wire format so they always agree."""

    model: str
    text: str
    tool_name: str | None
    arguments: str
    summary: str | None
    pieces: list[str]
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    reasoning_tokens: int = 4

    def responses_usage(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.input_tokens + self.output_tokens,
        }

    def chat_usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }


def build_answer(body: dict[str, Any], headers: dict[str, str], *, chat: bool) -> _Answer:
    """Echo the last user message; call a tool when asked to (and the last item is not a tool result)."""
    items = body.get("messages" if chat else "input")
    items = [{"role": "user", "content": items}] if isinstance(items, str) else items
    items = [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
    texts = [_content_text(body.get("instructions"))]
    last_user = ""
    for item in items:
        texts.append(_content_text(item.get("content", item.get("output"))))
        if item.get("role") == "user":
            last_user = texts[-1]
    words = last_user.split()
    input_tokens = sum(len(t.split()) for t in texts) + 10
    cached = input_tokens // 2 if body.get("prompt_cache_key") or body.get("previous_response_id") else 0
    deltas = max(1, int(headers.get("x-sim-deltas", 8)))
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    last = items[-1] if items else {}
    after_tool = last.get("type") == "function_call_output" or last.get("role") == "tool"
    wants_tool = "x-sim-tool-call" in headers or "call tool" in last_user.lower()
    tool_name = None
    if tools and wants_tool and not after_tool:
        first = tools[0].get("function", tools[0]) if chat else tools[0]
        tool_name = headers.get("x-sim-tool-call") or first.get("name") or "tool"
    text, arguments = "", ""
    if tool_name:
        arguments = json.dumps({"query": " ".join(words[:6])})
        pieces = _split(arguments, deltas)
    else:
        text = "Simulated reply: " + " ".join(words[:12]) if words else "Simulated reply."
        while len(text) < deltas:
            text += " more"
        pieces = _split(text, deltas)
    reasoning = body.get("reasoning")
    summary = None
    if not chat and isinstance(reasoning, dict) and reasoning.get("summary"):
        summary = "Considering: " + " ".join(words[:3])
    return _Answer(
        model=str(body.get("model")), text=text, tool_name=tool_name, arguments=arguments, summary=summary,
        pieces=pieces, input_tokens=input_tokens, cached_tokens=cached,
        output_tokens=len((text or arguments).split()) + 4,
    )  # fmt: skip


def _response_object(body: dict[str, Any], resp_id: str, created: int, status: str, **rest: Any) -> dict:
    return {
        "id": resp_id, "object": "response", "created_at": created, "status": status,
        "background": False, "error": None, "incomplete_details": None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "model": body.get("model"), "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "store": body.get("store", True), "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [], "top_p": 1.0, "truncation": "disabled", "usage": None,
        "user": None, "metadata": body.get("metadata") or {}, **rest,
    }  # fmt: skip


def responses_events(body: dict[str, Any], ans: _Answer) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The Responses streaming sequence, and the final response object (the JSON answer too)."""
    resp_id, created = f"resp_{uuid.uuid4().hex}", int(time.time())
    start = _response_object(body, resp_id, created, "in_progress")
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": start},
        {"type": "response.in_progress", "response": start},
    ]
    output: list[dict[str, Any]] = []
    if ans.summary is not None:
        idx, rid = len(output), f"rs_{uuid.uuid4().hex}"
        part = {"type": "summary_text", "text": ans.summary}
        done = {"type": "reasoning", "id": rid, "summary": [part]}
        at = {"item_id": rid, "output_index": idx, "summary_index": 0}
        events += [
            {"type": "response.output_item.added", "output_index": idx, "item": {**done, "summary": []}},
            {"type": "response.reasoning_summary_part.added", **at, "part": {**part, "text": ""}},
            {"type": "response.reasoning_summary_text.delta", **at, "delta": ans.summary},
            {"type": "response.reasoning_summary_text.done", **at, "text": ans.summary},
            {"type": "response.reasoning_summary_part.done", **at, "part": part},
            {"type": "response.output_item.done", "output_index": idx, "item": done},
        ]
        output.append(done)
    idx = len(output)
    if ans.tool_name:
        fid, call_id = f"fc_{uuid.uuid4().hex}", f"call_{uuid.uuid4().hex[:24]}"
        item = {"type": "function_call", "id": fid, "call_id": call_id, "name": ans.tool_name}
        done = {**item, "arguments": ans.arguments, "status": "completed"}
        at = {"item_id": fid, "output_index": idx}
        events.append({"type": "response.output_item.added", "output_index": idx,
                       "item": {**item, "arguments": "", "status": "in_progress"}})  # fmt: skip
        events += [{"type": "response.function_call_arguments.delta", **at, "delta": p} for p in ans.pieces]
        events.append({"type": "response.function_call_arguments.done", **at, "arguments": ans.arguments})
    else:
        mid = f"msg_{uuid.uuid4().hex}"
        part = {"type": "output_text", "text": ans.text, "annotations": []}
        done = {"type": "message", "id": mid, "role": "assistant", "status": "completed", "content": [part]}
        at = {"item_id": mid, "output_index": idx, "content_index": 0}
        events += [
            {"type": "response.output_item.added", "output_index": idx,
             "item": {**done, "status": "in_progress", "content": []}},
            {"type": "response.content_part.added", **at, "part": {**part, "text": ""}},
        ]  # fmt: skip
        delta = "response.output_text.delta"
        events += [{"type": delta, **at, "delta": p, "logprobs": []} for p in ans.pieces]
        events += [
            {"type": "response.output_text.done", **at, "text": ans.text, "logprobs": []},
            {"type": "response.content_part.done", **at, "part": part},
        ]
    events.append({"type": "response.output_item.done", "output_index": idx, "item": done})
    output.append(done)
    final = _response_object(body, resp_id, created, "completed", output=output, usage=ans.responses_usage())
    events.append({"type": "response.completed", "response": final})
    for n, event in enumerate(events):
        event["sequence_number"] = n
    return events, final


def sse_frames(events: list[dict[str, Any]]) -> list[tuple[bytes, bool]]:
    return [(sse_event(e["type"], e), e["type"].endswith(".delta")) for e in events]


def chat_completion(ans: _Answer, *, stream: bool, include_usage: bool) -> tuple[list[dict[str, Any]], dict]:
    """Chat Completions chunks (role, deltas, finish, optional usage) and the non-streaming object."""
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:29]}", int(time.time())
    base = {"id": cid, "created": created, "model": ans.model, "system_fingerprint": None}
    finish = "tool_calls" if ans.tool_name else "stop"
    call_id = f"call_{uuid.uuid4().hex[:24]}"
    function = {"name": ans.tool_name, "arguments": ans.arguments}
    call = {"id": call_id, "type": "function", "function": function}
    message: dict[str, Any] = {"role": "assistant", "content": ans.text or None, "refusal": None}
    if ans.tool_name:
        message["tool_calls"] = [call]
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    whole = {**base, "object": "chat.completion", "choices": [choice], "usage": ans.chat_usage()}
    if not stream:
        return [], whole
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        return {**base, "object": "chat.completion.chunk", "choices": [choice], **extra}

    if ans.tool_name:
        first = {**call, "index": 0, "function": {"name": ans.tool_name, "arguments": ""}}
        chunks = [chunk({"role": "assistant", "content": None, "tool_calls": [first]})]
        chunks += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in ans.pieces]
    else:
        chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
        chunks += [chunk({"content": p}) for p in ans.pieces]
    chunks.append(chunk({}, finish))
    if include_usage:
        chunks.append({**base, "object": "chat.completion.chunk", "choices": [], "usage": ans.chat_usage()})
    return chunks, whole


def codex_model(slug: str, priority: int) -> dict[str, Any]:
    return {
        "slug": slug, "display_name": slug, "description": f"Simulated {slug}.",
        "default_reasoning_level": "medium", "shell_type": "shell_command", "visibility": "list",
        "supported_in_api": True, "priority": priority,
        "supported_reasoning_levels": [{"effort": e, "description": e} for e in ("low", "medium", "high")],
        "context_window": 272_000, "max_context_window": 272_000, "auto_compact_token_limit": 200_000,
    }  # fmt: skip


def wham_usage(login: Login, usage: Usage) -> dict[str, Any]:
    now = time.time()

    def window(w: str, seconds: int) -> dict[str, Any]:
        reset_at = getattr(usage, f"{w}_reset_at")
        return {"used_percent": getattr(usage, f"{w}_used_percent"), "limit_window_seconds": seconds,
                "reset_after_seconds": max(0, int(reset_at - now)), "reset_at": int(reset_at)}  # fmt: skip

    reached = max(usage.primary_used_percent, usage.secondary_used_percent) >= 100
    return {"plan_type": login.plan, "credits": None, "rate_limit": {
        "allowed": not reached, "limit_reached": reached,
        "primary_window": window("primary", usage.primary_window_minutes * 60),
        "secondary_window": window("secondary", usage.secondary_window_minutes * 60),
    }}  # fmt: skip

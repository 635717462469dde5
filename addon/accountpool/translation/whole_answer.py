"""One whole answer from the backend's whole Responses event stream, for clients that did not ask to stream.

A `chatgpt` account's backend only streams; a `stream: false` client gets the stream assembled here,
either as a `chat.completion` object (built from the same `ChatStreamTranslator` as the streaming path,
so both kinds of Chat client see the same answer) or as the terminal Responses `response` object.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from accountpool.translation.chat_stream import STREAM_INTERRUPTED_ERROR, ChatStreamTranslator, ResponsesStreamError


def assemble_chat_completion(
    events: Iterable[tuple[str, Mapping[str, Any]]], *, model: str, completion_id: str, created: int
) -> dict[str, Any]:
    """One `chat.completion` object from a whole Responses event stream (for `stream: false`
    Chat clients of a `chatgpt` account, whose backend only streams).

    Built from the same translator as the streaming path, so both kinds of client see the same
    text, reasoning, tool calls and finish reason. Raises `ResponsesStreamError` if the stream
    failed in-band or ended without a terminal event.
    """
    translator = ChatStreamTranslator(
        model=model, include_usage=False, completion_id=completion_id, created=created
    )
    content: list[str] = []
    reasoning: list[str] = []
    refusal: list[str] = []
    calls: list[dict[str, Any]] = []
    for event_type, data in events:
        for chunk in translator.feed_chunks(event_type, data):
            if "error" in chunk:
                raise ResponsesStreamError(chunk["error"])
            for choice in chunk["choices"]:
                delta = choice["delta"]
                content.append(delta.get("content") or "")
                reasoning.append(delta.get("reasoning_content") or "")
                refusal.append(delta.get("refusal") or "")
                for tc in delta.get("tool_calls") or []:
                    if tc["index"] == len(calls):
                        fn = {"name": tc["function"]["name"], "arguments": ""}
                        calls.append({"id": tc["id"], "type": "function", "function": fn})
                    calls[tc["index"]]["function"]["arguments"] += tc["function"].get("arguments") or ""
        if translator.finished:
            break
    if not translator.finished:
        translator.finish()
        raise ResponsesStreamError(translator.error or dict(STREAM_INTERRUPTED_ERROR))

    text = "".join(content)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not calls else None,
        "refusal": "".join(refusal) or None,
    }
    if any(reasoning):
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    result: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": translator.finish_reason}
        ],
    }
    if translator.usage is not None:
        result["usage"] = translator.usage
    return result


def final_response_object(events: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, Any] | None:
    """The `response` object of the terminal event (`response.completed`, `.incomplete` or
    `.failed`), for `/v1/responses` clients with `stream: false` on a `chatgpt` account.

    The Codex backend may send a terminal `response` whose `output` is empty although
    `response.output_item.done` events carried the items; the items are put back in that case,
    ordered by `output_index`. Returns None if the stream had no terminal response event.
    """
    items: dict[int, Any] = {}
    for event_type, data in events:
        if event_type == "response.output_item.done" and isinstance(data.get("item"), dict):
            items[int(data.get("output_index", len(items)))] = data["item"]
        elif event_type in ("response.completed", "response.incomplete", "response.failed"):
            response = dict(data.get("response") or {})
            if not response.get("output") and items:
                response["output"] = [items[i] for i in sorted(items)]
            return response
    return None

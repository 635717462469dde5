"""What a client's request becomes for a `chatgpt` account's backend (issue 8): the request half of the translation.

A ChatGPT/Codex login's backend (`…/backend-api/codex/responses`) speaks exactly one dialect:
the Responses API, streamed, stateless (`store: false`), with the request fields Codex CLI
sends. Clients of the pool speak more: Chat Completions, `stream: false`, `max_output_tokens`,
`previous_response_id`… This module turns what the clients say into what the backend accepts;
`chat_stream` and `whole_answer` turn the backend's events back into what each client expects.
Pure (no I/O, no clock, no randomness).

Decisions (mirrored in the README):

- The leading `system`/`developer` messages of a chat request become `instructions` (joined by a
  blank line). The Codex backend requires `instructions`, and a client's system prompt is the
  natural value; later system/developer messages stay in place as `developer` input messages
  (the backend refuses the `system` role inside `input`).
- Chat function tools become Responses tools with `strict: false` unless the client said
  otherwise: Chat Completions defaults `strict` to false, the Responses API to true, and a
  non-strict schema sent as strict is refused.
- `reasoning_effort` also asks for `reasoning.summary: "auto"`, so Chat clients receive the
  model's reasoning summary as `delta.reasoning_content` (the de-facto field other servers use).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# ---------------------------------------------------------------------------------------------
# Responses request → Codex backend request
# ---------------------------------------------------------------------------------------------

CHATGPT_ACCEPTED_FIELDS: frozenset[str] = frozenset(
    {
        "model",
        "instructions",
        "input",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "reasoning",
        "store",
        "stream",
        "include",
        "service_tier",
        "prompt_cache_key",
        "text",
        "client_metadata",
    }
)
"""Top-level fields the Codex backend accepts: exactly what Codex CLI's `ResponsesApiRequest`
serializes. An allowlist rather than a denylist because the backend answers 400
("Unsupported parameter: …") for anything else, and a new client-side field should cost a log
line, not a failed request."""

CHATGPT_DROPPED_REASONS: dict[str, str] = {
    "max_output_tokens": "rejected by the Codex backend (it manages the output budget itself)",
    "max_completion_tokens": "rejected by the Codex backend",
    "temperature": "rejected by the Codex backend (sampling is fixed for its models)",
    "top_p": "rejected by the Codex backend",
    "top_logprobs": "not supported by the Codex backend",
    "metadata": "not supported by the Codex backend (it stores nothing to attach it to)",
    "user": "rejected by the Codex backend",
    "safety_identifier": "rejected by the Codex backend",
    "truncation": "rejected by the Codex backend",
    "previous_response_id": "store=false keeps no server-side state: the client must resend history",
    "conversation": "store=false keeps no server-side state",
    "background": "background mode needs store=true",
    "prompt": "stored prompt templates are not available to ChatGPT logins",
    "prompt_cache_retention": "rejected by the Codex backend (prompt_cache_key is kept)",
    "context_management": "rejected by the Codex backend",
    "max_tool_calls": "not sent by Codex CLI; not accepted by the backend",
    "stream_options": "not accepted by the Codex backend",
    "service_tier": "only 'priority' and 'flex' (what Codex CLI sends) are accepted",
    "store": "store=true is impossible for ChatGPT logins; forced to false",
    "input[].id": "item ids refer to stored items, and store=false stores none",
    "input[item_reference]": "references to stored items cannot resolve with store=false",
}
"""Why a field is removed before a request goes to a `chatgpt` account (for logs and README).
Fields not listed here but outside `CHATGPT_ACCEPTED_FIELDS` are dropped as "unknown"."""

CHATGPT_SERVICE_TIERS: frozenset[str] = frozenset({"priority", "flex"})
"""`service_tier` values Codex CLI sends (`fast` → `priority`, `flex`); other values are the
backend's default anyway, so removing them changes nothing but avoids a 400."""

REASONING_ENCRYPTED_CONTENT = "reasoning.encrypted_content"
"""With store=false the only way to carry reasoning across turns is encrypted reasoning items,
which is why Codex CLI always asks for them."""


def _text_input_message(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def _normalize_input(raw: Any, dropped: list[str]) -> list[Any]:
    """Make `input` a list of items the stateless backend can resolve.

    Item ids (`msg_…`, `rs_…`, `fc_…`) that a client echoes back point at stored items; with
    store=false the backend answers "Item with id … not found", so they are stripped (Codex CLI
    never serializes them either). `item_reference` items cannot be resolved at all.
    """
    if raw is None:
        return []
    if isinstance(raw, str):
        return [_text_input_message(raw)]
    if not isinstance(raw, list):
        return [raw]
    items: list[Any] = []
    for item in raw:
        if not isinstance(item, dict):
            items.append(item)
            continue
        if item.get("type") == "item_reference":
            if "input[item_reference]" not in dropped:
                dropped.append("input[item_reference]")
            continue
        new_item = item
        if "id" in item:
            new_item = {k: v for k, v in item.items() if k != "id"}
            if "input[].id" not in dropped:
                dropped.append("input[].id")
        if new_item.get("role") == "system" and new_item.get("type", "message") == "message":
            new_item = {**new_item, "role": "developer"}
        items.append(new_item)
    return items


def _normalize_tools(tools: Any) -> Any:
    """Rename preview built-in tools to the names the current backend knows."""
    if not isinstance(tools, list):
        return tools
    renamed = []
    for tool in tools:
        if isinstance(tool, dict) and str(tool.get("type", "")).startswith("web_search_preview"):
            tool = {**tool, "type": "web_search"}
        renamed.append(tool)
    return renamed


def normalize_for_chatgpt_with_dropped(
    body: Mapping[str, Any], *, default_instructions: str = ""
) -> tuple[dict[str, Any], list[str]]:
    """Return `(new_body, dropped)`: a Responses body the Codex backend accepts, and the names of
    the client's fields that had to go (see `CHATGPT_DROPPED_REASONS`), in a stable order.

    The input mapping is never modified (the relay may still need the original for an
    `api_key` account on failover). Idempotent: normalizing twice equals normalizing once.
    """
    dropped: list[str] = []
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key not in CHATGPT_ACCEPTED_FIELDS:
            dropped.append(key)
            continue
        out[key] = value

    if body.get("store"):
        dropped.append("store")
    tier = out.get("service_tier")
    if tier is not None and tier not in CHATGPT_SERVICE_TIERS:
        del out["service_tier"]
        dropped.append("service_tier")

    out["input"] = _normalize_input(body.get("input"), dropped)
    instructions = out.get("instructions")
    if not isinstance(instructions, str):
        out["instructions"] = default_instructions
    include = [x for x in (out.get("include") or []) if isinstance(x, str)]
    out["include"] = list(dict.fromkeys([*include, REASONING_ENCRYPTED_CONTENT]))
    if "tools" in out:
        out["tools"] = _normalize_tools(out["tools"])
    out["stream"] = True
    out["store"] = False
    return out, dropped


def normalize_for_chatgpt(body: Mapping[str, Any], *, default_instructions: str = "") -> dict[str, Any]:
    """A NEW Responses body acceptable to the Codex backend (`stream: true`, `store: false`,
    `instructions` present, encrypted reasoning included, unsupported fields removed).

    Use `dropped_fields(body)` or `normalize_for_chatgpt_with_dropped` to log what was removed.
    """
    return normalize_for_chatgpt_with_dropped(body, default_instructions=default_instructions)[0]


def dropped_fields(body: Mapping[str, Any]) -> list[str]:
    """Which of the client's fields `normalize_for_chatgpt` removes, for logs and metrics."""
    return normalize_for_chatgpt_with_dropped(body)[1]


# ---------------------------------------------------------------------------------------------
# Chat Completions request → Responses request
# ---------------------------------------------------------------------------------------------

CHAT_DROPPED_PARAMETERS: dict[str, str] = {
    "n": "the Responses API produces one answer per request; n>1 is served as n=1",
    "logprobs": "not exposed by the Responses stream of ChatGPT logins",
    "top_logprobs": "not exposed by the Responses stream of ChatGPT logins",
    "presence_penalty": "no Responses API equivalent",
    "frequency_penalty": "no Responses API equivalent",
    "stop": "no Responses API equivalent (stop sequences are not supported)",
    "seed": "no Responses API equivalent",
    "logit_bias": "no Responses API equivalent",
    "audio": "audio output is not available through the Responses API",
    "modalities": "text is the only output modality served",
    "prediction": "predicted outputs are a Chat Completions-only feature",
    "web_search_options": "Chat's search-model option has no Responses equivalent here",
    "functions": "deprecated; send `tools`",
    "function_call": "deprecated; send `tool_choice`",
    "stream_options": "consumed by the translator (`include_usage`), not sent upstream",
    "tools[custom]": "custom (free-form) tools are not translated; use function tools",
    "messages[].content[input_audio]": "audio input is not translated",
    "messages[].reasoning_content": "reasoning cannot be replayed without its encrypted form",
}
"""Chat Completions parameters that do not reach the upstream, and why (README material)."""

_CHAT_PASSTHROUGH = (
    "model",
    "parallel_tool_calls",
    "temperature",
    "top_p",
    "stream",
    "user",
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "safety_identifier",
)
"""Fields whose name and meaning are the same in both APIs."""


def _content_text(content: Any) -> str:
    """Flatten chat content (a string or a list of text parts) into one string."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text") or p.get("refusal") or "")
            for p in content
            if isinstance(p, dict) and p.get("type") in ("text", "refusal", "input_text", "output_text")
        )
    return str(content)


def _user_part(part: Any, dropped: list[str]) -> dict[str, Any] | None:
    """One chat content part → one Responses input content part (or None if untranslatable)."""
    if isinstance(part, str):
        return {"type": "input_text", "text": part}
    if not isinstance(part, dict):
        return None
    kind = part.get("type")
    if kind == "text":
        return {"type": "input_text", "text": part.get("text", "")}
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        detail = image.get("detail") if isinstance(image, dict) else None
        return {"type": "input_image", "image_url": url, "detail": detail or "auto"}
    if kind == "file":
        file = part.get("file") or {}
        out: dict[str, Any] = {"type": "input_file"}
        for key in ("file_id", "file_data", "filename"):
            if file.get(key) is not None:
                out[key] = file[key]
        return out
    if kind in ("input_text", "input_image", "input_file"):
        return dict(part)
    key = f"messages[].content[{kind}]"
    if key not in dropped:
        dropped.append(key)
    return None


def _user_content(content: Any, dropped: list[str]) -> list[dict[str, Any]]:
    if isinstance(content, list):
        parts = (_user_part(p, dropped) for p in content)
        return [p for p in parts if p is not None]
    return [{"type": "input_text", "text": _content_text(content)}]


def _message_items(message: Mapping[str, Any], dropped: list[str]) -> list[dict[str, Any]]:
    """One chat message → the Responses input items that say the same thing."""
    role = message.get("role")
    content = message.get("content")
    if role in ("system", "developer"):
        return [{"type": "message", "role": "developer", "content": _user_content(content, dropped)}]
    if role == "user":
        return [{"type": "message", "role": "user", "content": _user_content(content, dropped)}]
    if role == "assistant":
        items: list[dict[str, Any]] = []
        if message.get("reasoning_content") and "messages[].reasoning_content" not in dropped:
            dropped.append("messages[].reasoning_content")
        text = _content_text(content)
        refusal = message.get("refusal")
        parts: list[dict[str, Any]] = []
        if text:
            parts.append({"type": "output_text", "text": text})
        if refusal:
            parts.append({"type": "refusal", "refusal": refusal})
        if parts:
            items.append({"type": "message", "role": "assistant", "content": parts})
        for call in message.get("tool_calls") or []:
            fn = call.get("function") or {}
            items.append(
                {
                    "type": "function_call",
                    "call_id": call.get("id", ""),
                    "name": fn.get("name", ""),
                    "arguments": fn.get("arguments") or "",
                }
            )
        return items
    if role == "tool":
        return [
            {
                "type": "function_call_output",
                "call_id": message.get("tool_call_id", ""),
                "output": _content_text(content),
            }
        ]
    if role == "function":
        if "function_call" not in dropped:
            dropped.append("function_call")
        return []
    raise ValueError(f"unsupported chat message role: {role!r}")


def _chat_tool(tool: Any, dropped: list[str]) -> dict[str, Any] | None:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        if "tools[custom]" not in dropped:
            dropped.append("tools[custom]")
        return None
    fn = tool.get("function") or {}
    out: dict[str, Any] = {"type": "function", "name": fn.get("name", "")}
    if fn.get("description") is not None:
        out["description"] = fn["description"]
    out["parameters"] = fn.get("parameters") or {"type": "object", "properties": {}}
    # Chat defaults strict to false, Responses to true: keep the chat meaning explicit.
    out["strict"] = bool(fn.get("strict", False))
    return out


def _chat_tool_choice(choice: Any) -> Any:
    if isinstance(choice, str) or not isinstance(choice, dict):
        return choice
    kind = choice.get("type")
    if kind == "function":
        return {"type": "function", "name": (choice.get("function") or {}).get("name", "")}
    if kind == "allowed_tools":
        allowed = choice.get("allowed_tools") or {}
        tools = [
            {"type": "function", "name": (t.get("function") or {}).get("name", "")}
            for t in allowed.get("tools") or []
            if isinstance(t, dict) and t.get("type") == "function"
        ]
        return {"type": "allowed_tools", "mode": allowed.get("mode", "auto"), "tools": tools}
    return choice


def _chat_response_format(fmt: Any) -> dict[str, Any] | None:
    if not isinstance(fmt, dict):
        return None
    kind = fmt.get("type")
    if kind == "json_schema":
        spec = fmt.get("json_schema") or {}
        out: dict[str, Any] = {"type": "json_schema", "name": spec.get("name", "response")}
        if spec.get("description") is not None:
            out["description"] = spec["description"]
        out["schema"] = spec.get("schema") or {}
        out["strict"] = bool(spec.get("strict", False))
        return out
    if kind in ("json_object", "text"):
        return {"type": kind}
    return None


def chat_request_to_responses_with_dropped(body: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Return `(responses_body, dropped)`: the Responses request equivalent to a
    `/v1/chat/completions` body, and which of its parameters could not be carried over (keys of
    `CHAT_DROPPED_PARAMETERS`). Raises ValueError for a message role that has no meaning."""
    dropped: list[str] = []
    out: dict[str, Any] = {}
    for key in _CHAT_PASSTHROUGH:
        if key in body:
            out[key] = body[key]

    messages = list(body.get("messages") or [])
    instructions: list[str] = []
    start = 0
    while start < len(messages):
        msg = messages[start]
        content = msg.get("content")
        text_only = isinstance(content, str) or (
            isinstance(content, list)
            and all(isinstance(p, dict) and p.get("type") == "text" for p in content)
        )
        if msg.get("role") not in ("system", "developer") or not text_only:
            break
        instructions.append(_content_text(content))
        start += 1
    if instructions:
        out["instructions"] = "\n\n".join(instructions)
    items: list[dict[str, Any]] = []
    for msg in messages[start:]:
        items.extend(_message_items(msg, dropped))
    out["input"] = items

    if "tools" in body:
        tools = [_chat_tool(t, dropped) for t in body.get("tools") or []]
        out["tools"] = [t for t in tools if t is not None]
    if "tool_choice" in body:
        out["tool_choice"] = _chat_tool_choice(body["tool_choice"])

    text: dict[str, Any] = {}
    fmt = _chat_response_format(body.get("response_format"))
    if fmt is not None:
        text["format"] = fmt
    if body.get("verbosity") is not None:
        text["verbosity"] = body["verbosity"]
    if text:
        out["text"] = text

    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        out["max_output_tokens"] = max_tokens
    effort = body.get("reasoning_effort")
    if effort is not None:
        out["reasoning"] = {"effort": effort} if effort == "none" else {"effort": effort, "summary": "auto"}

    for key in CHAT_DROPPED_PARAMETERS:
        if body.get(key) is None:
            continue
        if key == "n" and body[key] in (None, 1):
            continue
        if key in ("logprobs",) and not body[key]:
            continue
        if key == "modalities" and body[key] in (None, ["text"]):
            continue
        dropped.append(key)
    return out, dropped


def chat_request_to_responses(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Responses request equivalent to a `/v1/chat/completions` body (see module docstring
    for the mapping decisions; `CHAT_DROPPED_PARAMETERS` lists what does not survive)."""
    return chat_request_to_responses_with_dropped(body)[0]

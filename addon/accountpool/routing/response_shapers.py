"""What one attempt sends upstream and how its answer is shaped for the client.

Most answers pass through byte for byte (`Passthrough`). Three cases change them: a model
catalog gets the operator's model overrides (docs/BEHAVIOUR.md §14), and a ChatGPT login answering a Chat
Completions or `stream: false` client is translated from its Responses stream (issue 8). The
translation is fed chunk by chunk, so a translated stream still streams.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from accountpool.models import Account, AccountKind, ModelOverride
from accountpool.routing.admitted import Admitted
from accountpool.storage.secrets_store import Credentials
from accountpool.translation.chat_stream import STREAM_INTERRUPTED_ERROR, ChatStreamTranslator, ResponsesStreamError
from accountpool.translation.request_mapping import chat_request_to_responses, normalize_for_chatgpt
from accountpool.translation.whole_answer import assemble_chat_completion, final_response_object
from accountpool.upstream.sse_usage import SseScanner, TokenUsage, usage_from_dict
from accountpool.upstream.upstream_request import client_response_headers, upstream_headers, upstream_url

CATALOG_PATHS = ("/v1/models", "/backend-api/codex/models")
CATALOG_BODY_LIMIT = 4 * 1024 * 1024


class Passthrough:
    """The upstream's bytes, unchanged."""

    wants_usage_scan = True
    content_type: str | None = None
    whole_answer = False
    """True when the client gets one assembled answer: the relay then reads it all before committing."""

    def __init__(self, *, chat_style_errors: bool = False) -> None:
        self.chat_style_errors = chat_style_errors
        self.usage: TokenUsage | None = None

    def client_headers(self, upstream: list[tuple[str, str]], account: Account, request_id: str,
                       attempts: int) -> list[tuple[str, str]]:
        headers = client_response_headers(upstream, account=account, request_id=request_id, attempts=attempts)
        if self.content_type:
            headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
            headers.append(("content-type", self.content_type))
        return headers

    def feed(self, chunk: bytes) -> bytes:
        return chunk

    def finish(self) -> bytes:
        return b""

    def interrupted(self, brief: str) -> bytes:
        """The explicit error a client sees when the upstream cut the stream after commit (docs/BEHAVIOUR.md §11)."""
        error = {"message": f"accountpool: {brief}", "type": "server_error", "code": "stream_interrupted",
                 "param": None}
        if self.chat_style_errors:
            return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
        # The Responses stream's own `error` event is flat (code, message); SDKs look for `error`.
        event = {"type": "error", "code": error["code"], "message": error["message"], "param": None, "error": error}
        return b"event: error\ndata: " + json.dumps(event).encode() + b"\n\n"


class CatalogOverride(Passthrough):
    """Writes per-model context limits into `/v1/models` and Codex's models listing."""

    wants_usage_scan = False

    def __init__(self, overrides: dict[str, ModelOverride]) -> None:
        super().__init__()
        self.overrides = overrides
        self._body = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        self._body += chunk
        if len(self._body) > CATALOG_BODY_LIMIT:  # not a catalog we understand: give up, pass it on
            out, self._body, self.overrides = bytes(self._body), bytearray(), {}
            return out
        return b""

    def finish(self) -> bytes:
        if not self.overrides:
            return bytes(self._body)
        return apply_model_overrides(bytes(self._body), self.overrides)

    def interrupted(self, brief: str) -> bytes:
        return b""


def apply_model_overrides(body: bytes, overrides: dict[str, ModelOverride]) -> bytes:
    """Pure: the catalog with `context_window`, `max_context_window`, `auto_compact_token_limit` set."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    entries = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        entries = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        return body
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        name = entry.get("id") or entry.get("slug")
        override = overrides.get(name) if isinstance(name, str) else None
        if override is not None:
            entry["context_window"] = override.context_window
            entry["max_context_window"] = override.context_window
            entry["auto_compact_token_limit"] = override.auto_compact_token_limit
    return json.dumps(doc).encode()


class _EventShaper(Passthrough):
    """Base for shapers that read the upstream Responses stream event by event."""

    def __init__(self) -> None:
        super().__init__()
        self._scanner = SseScanner()

    def _events(self, chunk: bytes) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for name, data in self._scanner.feed(chunk):
            try:
                doc = json.loads(data)
            except ValueError:
                continue
            if isinstance(doc, dict):
                out.append((doc.get("type") or name, doc))
        return out


class ChatStream(_EventShaper):
    """Responses SSE → Chat Completions SSE, as it arrives."""

    content_type = "text/event-stream"
    wants_usage_scan = False

    def __init__(self, model: str, include_usage: bool) -> None:
        super().__init__()
        self.chat_style_errors = True
        self._translator = ChatStreamTranslator(
            model=model, include_usage=include_usage, completion_id=_completion_id(), created=int(time.time()))

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(part for name, doc in self._events(chunk) for part in self._translator.feed(name, doc))

    def finish(self) -> bytes:
        return b"" if self._translator.finished else b"".join(self._translator.finish())

    def interrupted(self, brief: str) -> bytes:
        return self.finish() or super().interrupted(brief)


class Assembled(_EventShaper):
    """A whole JSON answer built from the stream, for `stream: false` clients of a ChatGPT login."""

    content_type = "application/json"
    wants_usage_scan = False
    whole_answer = True

    def __init__(self, *, chat_model: str | None) -> None:
        super().__init__()
        self.chat_model = chat_model
        self._collected: list[tuple[str, dict[str, Any]]] = []

    def feed(self, chunk: bytes) -> bytes:
        self._collected.extend(self._events(chunk))
        return b""

    def finish(self) -> bytes:
        if self.chat_model is not None:
            try:
                doc = assemble_chat_completion(
                    self._collected, model=self.chat_model, completion_id=_completion_id(), created=int(time.time()))
            except ResponsesStreamError as exc:
                doc = {"error": exc.error}
        else:
            doc = final_response_object(self._collected) or {
                "error": dict(STREAM_INTERRUPTED_ERROR)}
        usage = doc.get("usage") if isinstance(doc, dict) else None
        if isinstance(usage, dict):
            self.usage = usage_from_dict(usage)
        return json.dumps(doc).encode()

    def interrupted(self, brief: str) -> bytes:
        return b""


def _completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


@dataclass
class AttemptPlan:
    url: str
    headers: list[tuple[str, str]]
    body: bytes
    shaper: Passthrough


def plan_attempt(admitted: Admitted, account: Account, creds: Credentials, *, chatgpt_base: str,
                 catalog_overrides: dict[str, ModelOverride]) -> AttemptPlan:
    """The upstream request for this account and the shaper for its answer."""
    token = creds.api_key or creds.access_token or ""
    url = upstream_url(account, admitted.path, chatgpt_base=chatgpt_base)
    headers = upstream_headers(account, admitted.headers, token=token)
    endpoint = admitted.endpoint
    is_chat = endpoint.startswith("/v1/chat/completions")
    body = admitted.body
    shaper: Passthrough
    if admitted.method == "GET" and endpoint.rstrip("/") in CATALOG_PATHS:
        shaper = CatalogOverride(catalog_overrides)
    elif account.kind == AccountKind.CHATGPT and admitted.json_body is not None and admitted.method == "POST":
        doc = admitted.json_body
        if is_chat:
            doc = chat_request_to_responses(doc)
        body = json.dumps(normalize_for_chatgpt(doc)).encode()
        headers = [(k, v) for k, v in headers if k.lower() not in ("content-type", "accept")]
        headers += [("content-type", "application/json"), ("accept", "text/event-stream")]
        if is_chat and admitted.stream:
            options = admitted.json_body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            shaper = ChatStream(admitted.model or "", include_usage)
        elif is_chat:
            shaper = Assembled(chat_model=admitted.model or "")
        elif not admitted.stream:
            shaper = Assembled(chat_model=None)
        else:
            shaper = Passthrough()
    else:
        shaper = Passthrough(chat_style_errors=is_chat)
    return AttemptPlan(url, headers, body, shaper)


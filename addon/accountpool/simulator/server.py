"""A simulated OpenAI / ChatGPT-Codex upstream that speaks the real wire formats and fails on cue.

docs/BEHAVIOUR.md §15 forbids tests against the real hosts, yet the proxy must be exercised over real sockets:
keep-alive, chunked SSE, abrupt resets, cuts mid-stream. So this is a real HTTP/1.1 server on
loopback (stdlib `ThreadingHTTPServer`), driven either in-process (`SimulatedUpstream`) or from
another process over its `/_sim/...` JSON control API (`python -m accountpool.simulator`).

Every answer is deterministic (text and token counts derive from the input) so assertions stay
exact, and nothing sleeps unless a test asks for it, so benchmarks measure the proxy, not this.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import signal
import socket
import struct
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

CODEX_CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
AUTH_CLAIM = "https://api.openai.com/auth"
FAULT_KINDS = frozenset({
    "rate_limit", "quota", "expired", "forbidden", "server_error", "model_not_found", "reset",
    "slow_first_byte", "cut", "inband_error", "refresh_error", "invalid_request",
})  # fmt: skip
CODEX_ALLOWED_FIELDS = frozenset({
    "model", "instructions", "input", "tools", "tool_choice", "parallel_tool_calls", "reasoning",
    "store", "stream", "include", "prompt_cache_key", "text", "service_tier", "client_metadata",
})  # fmt: skip
"""Top-level fields the Codex backend accepts; anything else is a 400 there, as upstream."""

_ROUTES = {
    ("POST", "/v1/responses"): "responses",
    ("POST", "/v1/chat/completions"): "chat",
    ("GET", "/v1/models"): "models",
    ("POST", "/backend-api/codex/responses"): "codex_responses",
    ("GET", "/backend-api/codex/models"): "codex_models",
    ("GET", "/backend-api/wham/usage"): "wham_usage",
    ("POST", "/oauth/token"): "oauth",
}
_CODEX_ENDPOINTS = frozenset({"codex_responses", "codex_models", "wham_usage"})
_MODELS = ("gpt-5.5", "gpt-5.4-mini")
_JWT_KEY = b"accountpool-simulator-not-a-secret"
REQUEST_LOG_LIMIT = 100_000
"""`requests()` keeps the newest this many, so a long benchmark cannot grow memory without bound."""


@dataclass
class Usage:
    """What the usage headers report for one credential: Codex windows and `x-ratelimit-*` values."""

    primary_used_percent: float = 10.0
    primary_window_minutes: int = 300
    primary_reset_at: float = field(default_factory=lambda: time.time() + 3_600)
    secondary_used_percent: float = 5.0
    secondary_window_minutes: int = 10_080
    secondary_reset_at: float = field(default_factory=lambda: time.time() + 3 * 86_400)
    limit_requests: int = 5_000
    remaining_requests: int = 4_999
    reset_requests: str = "12ms"
    limit_tokens: int = 2_000_000
    remaining_tokens: int = 1_999_000
    reset_tokens: str = "6m0s"

    def update(self, **values: Any) -> None:
        """Accept `*_reset_after_seconds` as well, because that is what tests think in."""
        for name, value in values.items():
            if name in ("primary_reset_after_seconds", "secondary_reset_after_seconds"):
                name, value = name.replace("_after_seconds", "_at"), time.time() + float(value)
            if name not in {f.name for f in dataclasses.fields(self)}:
                raise ValueError(f"unknown usage field: {name}")
            setattr(self, name, value)

    def codex_headers(self, now: float) -> dict[str, str]:
        out: dict[str, str] = {}
        for w in ("primary", "secondary"):
            reset_at = getattr(self, f"{w}_reset_at")
            out |= {
                f"x-codex-{w}-used-percent": str(float(getattr(self, f"{w}_used_percent"))),
                f"x-codex-{w}-window-minutes": str(getattr(self, f"{w}_window_minutes")),
                f"x-codex-{w}-reset-after-seconds": str(max(0, int(reset_at - now))),
                f"x-codex-{w}-reset-at": str(int(reset_at)),
            }
        return out

    def ratelimit_headers(self) -> dict[str, str]:
        return {
            f"x-ratelimit-{what}-{unit}": str(getattr(self, f"{what}_{unit}"))
            for what in ("limit", "remaining", "reset")
            for unit in ("requests", "tokens")
        }


@dataclass
class _Login:
    account_id: str
    email: str
    plan: str
    client_id: str
    access_ttl_s: float
    access_token: str = ""
    refresh_token: str = ""
    id_token: str = ""
    expired: bool = False
    """An `expired` fault hit the current access token: it stays rejected until a refresh."""
    refresh_count: int = 0
    usage: Usage = field(default_factory=Usage)


@dataclass
class _Fault:
    spec: dict[str, Any]
    remaining: int | None


@dataclass
class _Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    raw: bytes
    body: Any = None

    @property
    def bearer(self) -> str | None:
        value = self.headers.get("authorization", "")
        return value[7:].strip() if value[:7].lower() == "bearer " else None


@dataclass
class _Reply:
    """One answer, with the misbehaviour the handler should add while sending it."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    events: list[tuple[bytes, bool]] | None = None
    """SSE frames and whether each is a delta (delayed by `delta_delay_s`); sent chunked."""
    delta_delay_s: float = 0.0
    first_byte_delay_s: float = 0.0
    reset: bool = False
    cut_after: int | None = None
    """Drop the connection after this many SSE frames (or half a JSON body), no terminator."""


def _json_reply(status: int, obj: Any, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, {"content-type": "application/json", **(headers or {})}, json.dumps(obj).encode())


def _error(status: int, message: str, type_: str | None, code: str | None, **extra: Any) -> _Reply:
    """An OpenAI-shaped error, the one shape classifiers and clients parse."""
    error = {"message": message, "type": type_, "code": code, "param": None, **extra}
    return _json_reply(status, {"error": error})


def _detail(status: int, detail: str) -> _Reply:
    """The Codex backend's FastAPI-style validation error."""
    return _json_reply(status, {"detail": detail})


def _mask(key: str) -> str:
    """OpenAI's mask for a wrong key: enough to tell keys apart, never the key itself."""
    return f"{key[:3]}{'*' * max(4, len(key) - 7)}{key[-4:]}" if len(key) >= 12 else "****"


def _go_duration(seconds: float) -> str:
    """`x-ratelimit-reset-*` style: "12ms", "1s", "6m0s"."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(claims: dict[str, Any]) -> str:
    """A real-looking HS256 JWT; consumers decode claims without checking the signature."""
    payload = json.dumps(claims, separators=(",", ":")).encode()
    signing_input = _b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64url(payload)
    return f"{signing_input}.{_b64url(hmac.new(_JWT_KEY, signing_input.encode(), hashlib.sha256).digest())}"


def _sse(name: str | None, data: Any) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {name}\n" if name else "").encode() + b"data: " + payload.encode() + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


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


def _frames(events: list[dict[str, Any]]) -> list[tuple[bytes, bool]]:
    return [(_sse(e["type"], e), e["type"].endswith(".delta")) for e in events]


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


class SimulatedUpstream:
    """The simulated upstream: register credentials, script faults, inspect what arrived."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        addr = ipaddress.ip_address(socket.gethostbyname(host) if host == "localhost" else host)
        if addr.version != 4 or not addr.is_loopback:  # it accepts any key: never expose it
            raise ValueError(f"the simulator binds to IPv4 loopback only, not {host}")
        self._bind = (str(addr), port)
        self._lock = threading.Lock()
        self._api_keys: dict[str, Usage] = {}
        self._plans: dict[str, str] = {}
        self._logins: dict[str, _Login] = {}
        self._token_owner: dict[str, str] = {}
        """Every access and refresh token ever issued → account id (old ones are recognised, then refused)."""
        self._faults: dict[str, list[_Fault]] = {}
        self._requests: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_LIMIT)
        self._conns: set[socket.socket] = set()
        self._server: _Server | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> SimulatedUpstream:
        self._server = _Server(self._bind, _Handler)
        self._server.sim = self
        # a short poll interval keeps stop() fast: shutdown() waits for the next poll
        poll = {"poll_interval": 0.05}
        threading.Thread(target=self._server.serve_forever, kwargs=poll, name="sim", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving and sever keep-alive connections, so clients see a dead upstream at once."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server = None

    def __enter__(self) -> SimulatedUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ---- credentials and scripting ---------------------------------------------------------

    def add_api_key(self, key: str, *, plan: str = "paid", usage: dict[str, Any] | None = None) -> None:
        """Accept `key` on `/v1/...`; `usage` sets `Usage` fields (e.g. `remaining_requests`)."""
        with self._lock:
            self._api_keys[key] = Usage()
            self._api_keys[key].update(**(usage or {}))
            self._plans[key] = plan

    def add_chatgpt_login(
        self, account_id: str, *, email: str, plan: str = "plus", access_ttl_s: float = 3600,
        client_id: str = CODEX_CLIENT_ID,
    ) -> dict[str, Any]:  # fmt: skip
        """Register (or re-authorize) a login; returns it as Codex CLI's `auth.json`."""
        with self._lock:
            login = _Login(account_id, email, plan, client_id, access_ttl_s)
            if old := self._logins.get(account_id):  # re-authorizing keeps the account's usage
                login.usage, login.refresh_count = old.usage, old.refresh_count
            self._issue_tokens(login)
            self._logins[account_id] = login
            tokens = self._tokens(login)
        stamp = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        return {"OPENAI_API_KEY": None, "tokens": tokens, "last_refresh": stamp}

    def script(self, credential: str, faults: list[dict[str, Any]]) -> None:
        """Replace the credential's fault queue; each fault hits `count` matching requests (None: forever)."""
        queue = []
        for spec in faults:
            if spec.get("kind") not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind: {spec.get('kind')!r}")
            count = spec.get("count", 1)
            if count is not None and (not isinstance(count, int) or count < 0):
                raise ValueError(f"fault count must be a non-negative integer or null, not {count!r}")
            queue.append(_Fault(dict(spec), count))
        with self._lock:
            self._faults[credential] = [f for f in queue if f.remaining != 0]

    def set_usage(self, credential: str, **values: Any) -> None:
        with self._lock:
            self._usage(credential).update(**values)

    def usage_of(self, credential: str) -> Usage:
        """A copy of what the usage headers of this credential report now."""
        with self._lock:
            return dataclasses.replace(self._usage(credential))

    def _usage(self, credential: str) -> Usage:
        """A login's (by upstream account id) or an API key's usage; the caller holds the lock."""
        login = self._logins.get(credential)
        usage = login.usage if login else self._api_keys.get(credential)
        if usage is None:
            raise KeyError(f"unknown credential: {credential}")
        return usage

    def requests(self) -> list[dict[str, Any]]:
        """Every upstream request received so far, in order (`/_sim/` control calls excluded)."""
        with self._lock:
            return list(self._requests)

    def reset_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def current_tokens(self, account_id: str) -> dict[str, str]:
        with self._lock:
            return self._tokens(self._logins[account_id])

    def refresh_count(self, account_id: str) -> int:
        with self._lock:
            return self._logins[account_id].refresh_count

    # ---- internals (callers hold self._lock) ------------------------------------------------

    def _issue_tokens(self, login: _Login) -> None:
        """New access, id and refresh tokens; the previous ones stop working (rotation)."""
        now = int(time.time())
        user_id = "user-" + hashlib.sha256(login.account_id.encode()).hexdigest()[:24]
        auth = {"chatgpt_account_id": login.account_id, "chatgpt_plan_type": login.plan,
                "chatgpt_user_id": user_id}  # fmt: skip
        login.id_token = make_jwt({
            "iss": "https://auth.openai.com", "aud": [login.client_id], "sub": f"auth0|{user_id}",
            "iat": now, "exp": now + 3600, "email": login.email, "email_verified": True,
            AUTH_CLAIM: {**auth, "user_id": user_id},
        })  # fmt: skip
        login.access_token = make_jwt({
            "iss": "https://auth.openai.com", "aud": ["https://api.openai.com/v1"],
            "client_id": login.client_id, "iat": now, "exp": int(now + login.access_ttl_s),
            "jti": uuid.uuid4().hex,
            "scp": ["openid", "profile", "email", "offline_access"], AUTH_CLAIM: auth,
            "https://api.openai.com/profile": {"email": login.email},
        })  # fmt: skip
        login.refresh_token = f"rt_{secrets.token_urlsafe(32)}"
        login.expired = False
        self._token_owner[login.access_token] = self._token_owner[login.refresh_token] = login.account_id

    @staticmethod
    def _tokens(login: _Login) -> dict[str, str]:
        return {"id_token": login.id_token, "access_token": login.access_token,
                "refresh_token": login.refresh_token, "account_id": login.account_id}  # fmt: skip

    def _take_fault(self, credential: str | None, path: str, model: Any, *, oauth: bool) -> dict | None:
        """The first queued fault that matches this request, consuming one of its hits."""
        queue = self._faults.get(credential or "", [])
        for fault in queue:
            spec = fault.spec
            if (spec["kind"] == "refresh_error") != oauth:
                continue
            if spec.get("path") and spec["path"] not in path:
                continue
            if spec.get("model") and spec["model"] != model:
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    queue.remove(fault)
            return spec
        return None

    def _resolve(self, req: _Request, endpoint: str | None) -> str | None:
        if endpoint == "oauth":
            return self._token_owner.get(str(_form(req).get("refresh_token")))
        token = req.bearer or ""
        return token if token in self._api_keys else self._token_owner.get(token)

    # ---- request handling ------------------------------------------------------------------

    def _respond(self, req: _Request) -> _Reply:
        if req.path.startswith("/_sim/"):
            return self._control(req)
        endpoint = _ROUTES.get((req.method, req.path))
        with self._lock:
            credential = self._resolve(req, endpoint)
            self._requests.append({
                "at": time.time(), "method": req.method, "path": req.path, "query": req.query,
                "auth": req.headers.get("authorization"),
                "account_header": req.headers.get("chatgpt-account-id"),
                "credential": credential, "headers": req.headers, "body": req.body,
            })  # fmt: skip
        if endpoint is None:
            reply = _error(404, f"Invalid URL ({req.method} {req.path})", "invalid_request_error", None)
        elif endpoint == "oauth":
            reply = self._oauth(req, credential)
        else:
            reply = self._serve(req, endpoint, credential)
        reply.headers.setdefault("x-request-id", f"req_{uuid.uuid4().hex}")
        return reply

    def _authenticate(self, req: _Request, codex: bool) -> _Reply | None:
        token = req.bearer
        if not token:
            return _error(401, "Missing bearer authentication in header", "invalid_request_error", None)
        if not codex:
            if token in self._api_keys:
                return None
            message = (f"Incorrect API key provided: {_mask(token)}. You can find your API key at "
                       "https://platform.openai.com/account/api-keys.")  # fmt: skip
            return _error(401, message, "invalid_request_error", "invalid_api_key")
        login = self._logins.get(self._token_owner.get(token, ""))
        if login is None:
            return _error(401, "Could not parse your authentication token. Please try signing in again.",
                          "invalid_request_error", "invalid_token")  # fmt: skip
        if token != login.access_token:
            return _error(401, "Your authentication token has been invalidated. Please try signing in again.",
                          "invalid_request_error", "token_invalidated")  # fmt: skip
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        if login.expired or claims["exp"] <= time.time():
            return _expired()
        if req.headers.get("chatgpt-account-id") != login.account_id:
            return _error(403, "The ChatGPT-Account-Id header does not match this login.",
                          "invalid_request_error", "account_mismatch")  # fmt: skip
        return None

    def _serve(self, req: _Request, endpoint: str, credential: str | None) -> _Reply:
        codex = endpoint in _CODEX_ENDPOINTS
        body = req.body if isinstance(req.body, dict) else {}
        with self._lock:
            denied = self._authenticate(req, codex)
            login = self._logins.get(credential or "") if codex else None
            usage = (login.usage if login else None) if codex else self._api_keys.get(credential or "")
            reply = denied or _validate(endpoint, req)
            fault = None if reply else self._take_fault(credential, req.path, body.get("model"), oauth=False)
            if fault and fault["kind"] == "expired" and login:
                login.expired = True
            usage_headers = {}
            if usage:
                usage_headers = usage.codex_headers(time.time()) if codex else usage.ratelimit_headers()
        if reply is None and fault:
            reply = _fault_reply(fault, login, body.get("model"), usage)
        if reply is None:  # a normal answer, perhaps delivered badly
            reply = self._answer(req, endpoint, body, login, usage, fault)
            if fault and fault["kind"] == "slow_first_byte":
                reply.first_byte_delay_s = float(fault.get("delay_s", 1.0))
            elif fault and fault["kind"] == "cut":
                reply.cut_after = int(fault.get("after_events", 3)) if reply.events is not None else 0
        for name, value in usage_headers.items():
            reply.headers.setdefault(name, value)
        return reply

    def _answer(
        self, req: _Request, endpoint: str, body: dict, login: _Login | None, usage: Usage | None,
        fault: dict | None,
    ) -> _Reply:  # fmt: skip
        if endpoint == "models":
            data = [{"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "openai"}
                    for m in _MODELS]  # fmt: skip
            return _json_reply(200, {"object": "list", "data": data})
        if endpoint == "codex_models":
            return _json_reply(200, {"models": [_codex_model(m, i) for i, m in enumerate(_MODELS)]})
        if endpoint == "wham_usage":
            return _json_reply(200, _wham(login, usage))  # type: ignore[arg-type]
        delay = float(req.headers.get("x-sim-delta-delay-ms", 0)) / 1000
        stream = endpoint == "codex_responses" or body.get("stream") is True
        inband = fault if fault and fault["kind"] == "inband_error" else None
        ans = build_answer(body, req.headers, chat=endpoint == "chat")
        if endpoint == "chat":
            if inband:
                error = {"error": {**_inband_error(inband, ans.model), "type": "server_error", "param": None}}
                if not stream:
                    return _json_reply(200, error)
                return _Reply(events=[(_sse(None, error), False)])
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            chunks, whole = chat_completion(ans, stream=stream, include_usage=include)
            if not stream:
                return _json_reply(200, whole)
            frames = [(_sse(None, c), any(x["finish_reason"] is None for x in c["choices"])) for c in chunks]
            return _Reply(events=[*frames, (_sse(None, "[DONE]"), False)], delta_delay_s=delay)
        events, final = responses_events(body, ans)
        if inband:
            events = _inband_events(inband, events, ans.model)
            final = {**events[0]["response"], "status": "failed", "error": _inband_error(inband, ans.model)}
        if not stream:
            return _json_reply(200, final)
        return _Reply(events=_frames(events), delta_delay_s=delay)

    def _oauth(self, req: _Request, credential: str | None) -> _Reply:
        params = _form(req)

        def oauth_error(status: int, error: str, description: str) -> _Reply:
            return _json_reply(status, {"error": error, "error_description": description})

        if params.get("grant_type") != "refresh_token":
            return oauth_error(400, "unsupported_grant_type", "Only grant_type=refresh_token is supported.")
        with self._lock:
            login = self._logins.get(credential or "")
            if login is None:
                return oauth_error(400, "invalid_grant", "Invalid refresh token.")
            if params.get("client_id") != login.client_id:
                return oauth_error(401, "invalid_client", "Unknown or invalid client_id.")
            if params.get("refresh_token") != login.refresh_token:
                reused = "The refresh token has already been used. Please try signing in again."
                return oauth_error(400, "invalid_grant", reused)
            fault = self._take_fault(credential, req.path, None, oauth=True)
            if fault and (fault.get("error") or fault.get("status") == 400):
                error = fault.get("error", "invalid_grant")
                return oauth_error(400, error, fault.get("message", "Refresh refused (simulated)."))
            if fault:
                status = int(fault.get("status", 500))
                return oauth_error(status, "server_error", "Refresh failed (simulated).")
            self._issue_tokens(login)
            login.refresh_count += 1
            tokens = self._tokens(login)
        return _json_reply(200, {
            "access_token": tokens["access_token"], "id_token": tokens["id_token"],
            "refresh_token": tokens["refresh_token"], "token_type": "Bearer",
            "expires_in": int(login.access_ttl_s), "scope": "openid profile email offline_access",
        })  # fmt: skip

    def _control(self, req: _Request) -> _Reply:
        """The same controls as the Python API, as JSON over HTTP, for other processes."""
        b = dict(req.body) if isinstance(req.body, dict) else {}
        try:
            match (req.method, req.path):
                case ("POST", "/_sim/api_keys"):
                    self.add_api_key(b["key"], plan=b.get("plan", "paid"), usage=b.get("usage"))
                    return _json_reply(200, {"ok": True})
                case ("POST", "/_sim/logins"):
                    acct = b["account_id"]
                    kw = {k: b[k] for k in ("plan", "access_ttl_s", "client_id") if k in b}
                    auth = self.add_chatgpt_login(acct, email=b.get("email", f"{acct}@example.com"), **kw)
                    return _json_reply(200, auth)
                case ("POST", "/_sim/script"):
                    self.script(b["credential"], b.get("faults") or [])
                    return _json_reply(200, {"ok": True})
                case ("POST", "/_sim/usage"):
                    self.set_usage(b.pop("credential"), **b)
                    return _json_reply(200, {"ok": True})
                case ("GET", "/_sim/requests"):
                    return _json_reply(200, self.requests())
                case ("POST", "/_sim/reset"):
                    self.reset_requests()
                    if b.get("faults"):
                        with self._lock:
                            self._faults.clear()
                    return _json_reply(200, {"ok": True})
                case ("GET", "/_sim/tokens"):
                    acct = parse_qs(req.query).get("account_id", [""])[0]
                    tokens = {**self.current_tokens(acct), "refresh_count": self.refresh_count(acct)}
                    return _json_reply(200, tokens)
        except (KeyError, TypeError, ValueError) as exc:
            return _error(400, f"simulator control: {exc!r}", "invalid_request_error", None)
        return _error(404, f"Invalid URL ({req.method} {req.path})", "invalid_request_error", None)


def _form(req: _Request) -> dict[str, Any]:
    """OAuth bodies come as JSON (Codex CLI) or form-encoded (most other clients)."""
    if isinstance(req.body, dict):
        return req.body
    return dict(parse_qsl(req.raw.decode("utf-8", "replace")))


def _validate(endpoint: str, req: _Request) -> _Reply | None:
    """Reject what the real services reject, so translation bugs surface here rather than in production."""
    if req.method != "POST":
        return None
    body = req.body
    if not isinstance(body, dict):
        return _error(400, "We could not parse the JSON body of your request.", "invalid_request_error", None)
    if endpoint == "codex_responses":
        unknown = sorted(set(body) - CODEX_ALLOWED_FIELDS)
        if unknown:
            return _detail(400, f"Unsupported parameter: {unknown[0]}")
        if body.get("store") is True:
            return _detail(400, "Store must be set to false")
        if body.get("stream") is not True:
            return _detail(400, "Stream must be set to true")
    if not isinstance(body.get("model"), str):
        return _error(400, "Missing required parameter: 'model'.", "invalid_request_error",
                      "missing_required_parameter")  # fmt: skip
    if endpoint == "chat" and not isinstance(body.get("messages"), list):
        return _error(400, "Missing required parameter: 'messages'.", "invalid_request_error",
                      "missing_required_parameter")  # fmt: skip
    return None


def _expired() -> _Reply:
    message = "Provided authentication token is expired. Please try signing in again."
    return _error(401, message, None, "token_expired")


def _fault_reply(fault: dict, login: _Login | None, model: Any, usage: Usage | None) -> _Reply | None:
    """The error answer of a scripted fault, or None when the fault only alters a normal answer."""
    kind, message, now = fault["kind"], fault.get("message"), time.time()
    if kind == "reset":
        return _Reply(reset=True)
    if kind == "rate_limit":
        wait = fault.get("retry_after", 1)
        text = (f"Rate limit reached for {model or 'gpt-5.5'} in organization org-simulated on requests "
                "per min (RPM): Limit 3, Used 3, Requested 1. "
                f"Please try again in {_go_duration(float(wait))}.")  # fmt: skip
        reply = _error(int(fault.get("status", 429)), message or text, "requests", "rate_limit_exceeded")
        reply.headers |= {"retry-after": str(wait), "x-ratelimit-remaining-requests": "0",
                          "x-ratelimit-reset-requests": _go_duration(float(wait))}  # fmt: skip
        return reply
    if kind == "quota" and login:
        default_wait = (usage.primary_reset_at - now) if usage else 3600
        wait = int(fault.get("resets_in_seconds", max(1, default_wait)))
        error = {"type": "usage_limit_reached", "message": message or "The usage limit has been reached",
                 "plan_type": login.plan, "resets_at": int(now + wait),
                 "resets_in_seconds": wait}  # fmt: skip
        return _json_reply(429, {"error": error}, {"x-codex-primary-used-percent": "100.0"})
    if kind == "quota":
        return _error(429, message or "You exceeded your current quota, please check your plan and billing "
                      "details.", "insufficient_quota", "insufficient_quota")  # fmt: skip
    if kind == "expired":
        return _expired()
    if kind == "forbidden":
        message = message or "You are not permitted to perform this request."
        return _error(403, message, "invalid_request_error", "forbidden")
    if kind == "server_error":
        message = message or "The server had an error while processing your request. Sorry about that!"
        return _error(int(fault.get("status", 500)), message, "server_error", None)
    if kind == "model_not_found":
        return _error(404, message or f"The model `{model}` does not exist or you do not have access to it.",
                      "invalid_request_error", "model_not_found")  # fmt: skip
    if kind == "invalid_request":
        return _error(int(fault.get("status", 400)), message or "Invalid request (simulated).",
                      "invalid_request_error", fault.get("code"))  # fmt: skip
    return None


def _inband_message(fault: dict, model: str) -> str:
    return fault.get("message") or f"Rate limit reached for {model}. Please try again in 1s."


def _inband_error(fault: dict, model: str) -> dict[str, str]:
    return {"code": fault.get("code", "rate_limit_exceeded"), "message": _inband_message(fault, model)}


def _inband_events(fault: dict, events: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    """200 + the handshake events, then the failure as `response.failed` (or an `error` event)."""
    error = _inband_error(fault, model)
    head = events[:2]
    if fault.get("event") == "error":
        tail = {"type": "error", **error, "param": None}
    else:
        failed = {**head[0]["response"], "status": "failed", "error": error}
        tail = {"type": "response.failed", "response": failed}
    return [*head, {**tail, "sequence_number": 2}]


def _codex_model(slug: str, priority: int) -> dict[str, Any]:
    return {
        "slug": slug, "display_name": slug, "description": f"Simulated {slug}.",
        "default_reasoning_level": "medium", "shell_type": "shell_command", "visibility": "list",
        "supported_in_api": True, "priority": priority,
        "supported_reasoning_levels": [{"effort": e, "description": e} for e in ("low", "medium", "high")],
        "context_window": 272_000, "max_context_window": 272_000, "auto_compact_token_limit": 200_000,
    }  # fmt: skip


def _wham(login: _Login, usage: Usage) -> dict[str, Any]:
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    sim: SimulatedUpstream


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "accountpool-simulator"
    sys_version = ""
    disable_nagle_algorithm = True  # small SSE chunks must leave at once
    timeout = 300
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.sim._lock:
            self.server.sim._conns.add(self.connection)

    def finish(self) -> None:
        with self.server.sim._lock:
            self.server.sim._conns.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: benchmarks push thousands of requests and tests read `requests()` instead."""

    def _handle(self) -> None:
        try:
            raw = self._read_body()
            url = urlsplit(self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            req = _Request(self.command, url.path, url.query, headers, raw)
            if raw:
                try:
                    req.body = json.loads(raw)
                except ValueError:
                    req.body = raw.decode("utf-8", "replace")
            try:
                reply = self.server.sim._respond(req)
            except Exception as exc:  # a simulator bug must look like an upstream 500, not a hang
                reply = _error(500, f"simulator error: {exc!r}", "server_error", None)
            self._send(reply)
        except OSError:  # the client went away mid-answer: nothing left to tell it
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(parts)
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send(self, r: _Reply) -> None:
        if r.first_byte_delay_s:
            time.sleep(r.first_byte_delay_s)
        if r.reset:  # SO_LINGER 0 turns close() into a TCP RST; detach() so nothing sends a FIN first
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            os.close(self.connection.detach())
            self.close_connection = True
            return
        self.send_response(r.status)
        for name, value in r.headers.items():
            self.send_header(name, value)
        if r.events is None:
            self.send_header("content-length", str(len(r.body)))
            self.end_headers()
            self.wfile.write(r.body if r.cut_after is None else r.body[: len(r.body) // 2])
        else:
            self.send_header("content-type", "text/event-stream; charset=utf-8")
            self.send_header("cache-control", "no-cache")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            frames = r.events if r.cut_after is None else r.events[: r.cut_after]
            tail = b"" if r.cut_after is not None else b"0\r\n\r\n"
            if r.delta_delay_s <= 0:  # one syscall for the whole stream
                self.wfile.write(b"".join(_chunk(f) for f, _ in frames) + tail)
            else:
                for frame, is_delta in frames:
                    if is_delta:
                        time.sleep(r.delta_delay_s)
                    self.wfile.write(_chunk(frame))
                self.wfile.write(tail)
        if r.cut_after is not None:
            self._drop()


def main(argv: list[str] | None = None) -> int:
    """`python -m accountpool.simulator`: serve until SIGTERM/SIGINT, announcing the URL on stdout."""
    parser = argparse.ArgumentParser(prog="python -m accountpool.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    args = parser.parse_args(argv)
    try:
        sim = SimulatedUpstream(args.host, args.port).start()
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"accountpool-simulator listening on {sim.url}", flush=True)
    while not stop.wait(0.5):
        pass
    sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

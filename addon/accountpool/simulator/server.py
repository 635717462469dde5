"""A simulated OpenAI / ChatGPT-Codex upstream that speaks the real wire formats and fails on cue.

docs/BEHAVIOUR.md §15 forbids tests against the real hosts, yet the proxy must be exercised over real sockets:
keep-alive, chunked SSE, abrupt resets, cuts mid-stream. So this is a real HTTP/1.1 server on
loopback (stdlib `ThreadingHTTPServer`), driven either in-process (`SimulatedUpstream`) or from
another process over its `/_sim/...` JSON control API (`python -m accountpool.simulator`).

Every answer is deterministic (text and token counts derive from the input) so assertions stay
exact, and nothing sleeps unless a test asks for it, so benchmarks measure the proxy, not this.

This module is the server's behaviour: routes, authentication, token refresh and the control API. What it
answers comes from `answers`, how it fails from `faults`, what it refuses from `checks`, and how bytes go on
the wire from `http_framing`.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime as dt
import hashlib
import ipaddress
import json
import secrets
import signal
import socket
import threading
import time
import uuid
from collections import deque
from typing import Any
from urllib.parse import parse_qs

from accountpool.simulator.answers import (
    MODELS,
    build_answer,
    chat_completion,
    codex_model,
    responses_events,
    sse_frames,
    wham_usage,
)
from accountpool.simulator.checks import Request, form_fields, validate
from accountpool.simulator.faults import FAULT_KINDS, Fault, expired_reply, fault_reply, inband_error, inband_events
from accountpool.simulator.http_framing import SimHandler, SimServer
from accountpool.simulator.logins import AUTH_CLAIM, CODEX_CLIENT_ID, Login, make_jwt
from accountpool.simulator.replies import Reply, error_reply, json_reply, sse_event
from accountpool.simulator.usage import Usage

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
REQUEST_LOG_LIMIT = 100_000
"""`requests()` keeps the newest this many, so a long benchmark cannot grow memory without bound."""


def _mask(key: str) -> str:
    """OpenAI's mask for a wrong key: enough to tell keys apart, never the key itself."""
    return f"{key[:3]}{'*' * max(4, len(key) - 7)}{key[-4:]}" if len(key) >= 12 else "****"


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
        self._logins: dict[str, Login] = {}
        self._token_owner: dict[str, str] = {}
        """Every access and refresh token ever issued → account id (old ones are recognised, then refused)."""
        self._faults: dict[str, list[Fault]] = {}
        self._requests: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_LIMIT)
        self._conns: set[socket.socket] = set()
        self._server: SimServer | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> SimulatedUpstream:
        self._server = SimServer(self._bind, SimHandler)
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
            login = Login(account_id, email, plan, client_id, access_ttl_s)
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
            queue.append(Fault(dict(spec), count))
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

    def _issue_tokens(self, login: Login) -> None:
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
    def _tokens(login: Login) -> dict[str, str]:
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

    def _resolve(self, req: Request, endpoint: str | None) -> str | None:
        if endpoint == "oauth":
            return self._token_owner.get(str(form_fields(req).get("refresh_token")))
        token = req.bearer or ""
        return token if token in self._api_keys else self._token_owner.get(token)

    # ---- request handling ------------------------------------------------------------------

    def _respond(self, req: Request) -> Reply:
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
            reply = error_reply(404, f"Invalid URL ({req.method} {req.path})", "invalid_request_error", None)
        elif endpoint == "oauth":
            reply = self._oauth(req, credential)
        else:
            reply = self._serve(req, endpoint, credential)
        reply.headers.setdefault("x-request-id", f"req_{uuid.uuid4().hex}")
        return reply

    def _authenticate(self, req: Request, codex: bool) -> Reply | None:
        token = req.bearer
        if not token:
            return error_reply(401, "Missing bearer authentication in header", "invalid_request_error", None)
        if not codex:
            if token in self._api_keys:
                return None
            message = (f"Incorrect API key provided: {_mask(token)}. You can find your API key at "
                       "https://platform.openai.com/account/api-keys.")  # fmt: skip
            return error_reply(401, message, "invalid_request_error", "invalid_api_key")
        login = self._logins.get(self._token_owner.get(token, ""))
        if login is None:
            return error_reply(401, "Could not parse your authentication token. Please try signing in again.",
                          "invalid_request_error", "invalid_token")  # fmt: skip
        if token != login.access_token:
            return error_reply(401, "Your authentication token has been invalidated. Please try signing in again.",
                          "invalid_request_error", "token_invalidated")  # fmt: skip
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        if login.expired or claims["exp"] <= time.time():
            return expired_reply()
        if req.headers.get("chatgpt-account-id") != login.account_id:
            return error_reply(403, "The ChatGPT-Account-Id header does not match this login.",
                          "invalid_request_error", "account_mismatch")  # fmt: skip
        return None

    def _serve(self, req: Request, endpoint: str, credential: str | None) -> Reply:
        codex = endpoint in _CODEX_ENDPOINTS
        body = req.body if isinstance(req.body, dict) else {}
        with self._lock:
            denied = self._authenticate(req, codex)
            login = self._logins.get(credential or "") if codex else None
            usage = (login.usage if login else None) if codex else self._api_keys.get(credential or "")
            reply = denied or validate(endpoint, req)
            fault = None if reply else self._take_fault(credential, req.path, body.get("model"), oauth=False)
            if fault and fault["kind"] == "expired" and login:
                login.expired = True
            usage_headers = {}
            if usage:
                usage_headers = usage.codex_headers(time.time()) if codex else usage.ratelimit_headers()
        if reply is None and fault:
            reply = fault_reply(fault, login, body.get("model"), usage)
        if reply is None:  # a normal answer, perhaps delivered badly
            reply = self._answer(req, endpoint, body, login, usage, fault)
            if fault and fault["kind"] == "slow_first_byte":
                reply.first_byte_delay_s = float(fault.get("delay_s", 1.0))
            elif fault and fault["kind"] == "cut":
                reply.cut_after = int(fault.get("after_events", 3)) if reply.events is not None else 0
            elif fault and fault["kind"] == "stall" and reply.events is not None:
                reply.stall_after, reply.stall_s = int(fault.get("after_events", 7)), float(fault.get("delay_s", 5.0))
        for name, value in usage_headers.items():
            reply.headers.setdefault(name, value)
        return reply

    def _answer(
        self, req: Request, endpoint: str, body: dict, login: Login | None, usage: Usage | None,
        fault: dict | None,
    ) -> Reply:  # fmt: skip
        if endpoint == "models":
            data = [{"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "openai"}
                    for m in MODELS]  # fmt: skip
            return json_reply(200, {"object": "list", "data": data})
        if endpoint == "codex_models":
            return json_reply(200, {"models": [codex_model(m, i) for i, m in enumerate(MODELS)]})
        if endpoint == "wham_usage":
            return json_reply(200, wham_usage(login, usage))  # type: ignore[arg-type]
        delay = float(req.headers.get("x-sim-delta-delay-ms", 0)) / 1000
        stream = endpoint == "codex_responses" or body.get("stream") is True
        inband = fault if fault and fault["kind"] == "inband_error" else None
        ans = build_answer(body, req.headers, chat=endpoint == "chat")
        if endpoint == "chat":
            if inband:
                error = {"error": {**inband_error(inband, ans.model), "type": "server_error", "param": None}}
                if not stream:
                    return json_reply(200, error)
                return Reply(events=[(sse_event(None, error), False)])
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            chunks, whole = chat_completion(ans, stream=stream, include_usage=include)
            if not stream:
                return json_reply(200, whole)
            frames = [(sse_event(None, c), any(x["finish_reason"] is None for x in c["choices"])) for c in chunks]
            return Reply(events=[*frames, (sse_event(None, "[DONE]"), False)], delta_delay_s=delay)
        events, final = responses_events(body, ans)
        if inband:
            events = inband_events(inband, events, ans.model)
            final = {**events[0]["response"], "status": "failed", "error": inband_error(inband, ans.model)}
        if not stream:
            return json_reply(200, final)
        return Reply(events=sse_frames(events), delta_delay_s=delay)

    def _oauth(self, req: Request, credential: str | None) -> Reply:
        params = form_fields(req)

        def oauth_error(status: int, error: str, description: str) -> Reply:
            return json_reply(status, {"error": error, "error_description": description})

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
        return json_reply(200, {
            "access_token": tokens["access_token"], "id_token": tokens["id_token"],
            "refresh_token": tokens["refresh_token"], "token_type": "Bearer",
            "expires_in": int(login.access_ttl_s), "scope": "openid profile email offline_access",
        })  # fmt: skip

    def _control(self, req: Request) -> Reply:
        """The same controls as the Python API, as JSON over HTTP, for other processes."""
        b = dict(req.body) if isinstance(req.body, dict) else {}
        try:
            match (req.method, req.path):
                case ("POST", "/_sim/api_keys"):
                    self.add_api_key(b["key"], plan=b.get("plan", "paid"), usage=b.get("usage"))
                    return json_reply(200, {"ok": True})
                case ("POST", "/_sim/logins"):
                    acct = b["account_id"]
                    kw = {k: b[k] for k in ("plan", "access_ttl_s", "client_id") if k in b}
                    auth = self.add_chatgpt_login(acct, email=b.get("email", f"{acct}@example.com"), **kw)
                    return json_reply(200, auth)
                case ("POST", "/_sim/script"):
                    self.script(b["credential"], b.get("faults") or [])
                    return json_reply(200, {"ok": True})
                case ("POST", "/_sim/usage"):
                    self.set_usage(b.pop("credential"), **b)
                    return json_reply(200, {"ok": True})
                case ("GET", "/_sim/requests"):
                    return json_reply(200, self.requests())
                case ("POST", "/_sim/reset"):
                    self.reset_requests()
                    if b.get("faults"):
                        with self._lock:
                            self._faults.clear()
                    return json_reply(200, {"ok": True})
                case ("GET", "/_sim/tokens"):
                    acct = parse_qs(req.query).get("account_id", [""])[0]
                    tokens = {**self.current_tokens(acct), "refresh_count": self.refresh_count(acct)}
                    return json_reply(200, tokens)
        except (KeyError, TypeError, ValueError) as exc:
            return error_reply(400, f"simulator control: {exc!r}", "invalid_request_error", None)
        return error_reply(404, f"Invalid URL ({req.method} {req.path})", "invalid_request_error", None)


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

"""The mitmproxy addon: admit pooled requests and hand them to the relay (docs/DESIGN.md).

Hooks stay thin. `requestheaders` decides whether a flow is pooled and takes the client's key
out of it; `request` authenticates, validates and parses the body, then points the flow at the
relay on 127.0.0.1 with a one-time ticket; `responseheaders` streams the relay's answer.
Any exception in a pooled flow's hook answers the client with an error: mitmproxy would
otherwise forward the flow unmodified (fail-open), and this addon fails closed (docs/BEHAVIOUR.md §15).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Mapping
from typing import Any

import httpx
from mitmproxy import ctx, exceptions, http
from mitmproxy.connection import ConnectionState
from mitmproxy.proxy.mode_specs import ReverseMode
from mitmproxy.utils.asyncio_utils import create_task

from accountpool.proxy import addon_options, gc_tuning
from accountpool.proxy.client_auth import FailedAuthThrottle, bearer_value, key_fingerprint, proxy_auth_key
from accountpool.proxy.listen_backlog import deepen_accept_queues
from accountpool.proxy.relay import TICKET_HEADER, BufferedResponder, Relay, answers_whole
from accountpool.routing import errors
from accountpool.routing.admitted import Admitted
from accountpool.routing.errors import ErrorAnswer
from accountpool.routing.router import Router, RouterConfig
from accountpool.storage.metrics_writer import ClientKeyUse, MetricsWriter, RequestRecord
from accountpool.storage.paths import secrets_path_for
from accountpool.storage.pool_view import PoolView
from accountpool.storage.store import match_client_key
from accountpool.upstream.request_paths import PathVerdict, check_path, is_pooled
from accountpool.upstream.upstream_client import UpstreamClient
from accountpool.upstream.usage_sweep import UsageSweeper

log = logging.getLogger("accountpool")

POOLED = "accountpool.pooled"
DESTINATION = "accountpool.destination"
REFUSED = "accountpool.refused"
HELD_BACK = "accountpool.held_back"
"""The request's header fields and body while they are kept off the relay hop (see `_hand_to_relay`)."""
_BODY_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
INFLIGHT_CHECK_S = 0.1
STARTUP_WAIT_S = 10.0
"""How long a request that arrives before `running` waits for the relay (mitmproxy listens first)."""
CLIENT_KEY_HEADERS = ("authorization", "x-api-key", "api-key")
_CLIENT_KEY_FIELDS = tuple(h.encode() for h in CLIENT_KEY_HEADERS)
_KEY_FIELDS = frozenset({*_CLIENT_KEY_FIELDS, b"proxy-authorization"})
SESSION_HEADERS = ("session_id", "x-session-id", "conversation-id", "conversation_id")
_ADMISSION_HEADERS = frozenset({"content-type", "chatgpt-account-id", *SESSION_HEADERS})


MAX_REQUEST_HEADERS = 64
MAX_REQUEST_HEADER_BYTES = 32 * 1024


def header_flood(headers: http.Headers) -> str | None:
    """Why the request's headers are too many or too big to forward, or None."""
    fields = headers.fields
    if len(fields) > MAX_REQUEST_HEADERS:
        return f"{len(fields)} request headers exceed the limit of {MAX_REQUEST_HEADERS}"
    size = sum(len(k) + len(v) + 4 for k, v in fields)
    if size > MAX_REQUEST_HEADER_BYTES:
        return f"request headers of {size} bytes exceed the limit of {MAX_REQUEST_HEADER_BYTES}"
    return None


def _text(value: bytes) -> str:
    """A header value as mitmproxy's `Headers` decodes it."""
    return value.decode("utf-8", "surrogateescape")


def _joined(values: list[bytes]) -> str:
    """Repeated fields read as one value, as `Headers[name]` reads them."""
    return ", ".join(_text(v) for v in values)


def session_key(headers: Mapping[str, str], body: dict[str, Any] | None) -> str | None:
    """A hash of the conversation identity: affinity keeps a conversation on one account."""
    raw = next((headers[h] for h in SESSION_HEADERS if h in headers), None)
    if raw is None and body is not None:
        for field in ("prompt_cache_key", "previous_response_id"):
            if isinstance(body.get(field), str) and body[field]:
                raw = f"{field}:{body[field]}"
                break
    return hashlib.sha256(raw.encode()).hexdigest()[:24] if raw else None




def write_probe(conn: Any) -> str | None:
    """Why the proxy cannot write `pool.db` (read-only file or directory), or None. Writes nothing: the probe
    row is rolled back. A database locked by another writer is not a refusal (rows wait, see README)."""
    import sqlite3

    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT OR REPLACE INTO pool_state (key, value, updated_at) VALUES ('write_probe', '', 0)")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        return None if "locked" in str(exc) or "busy" in str(exc) else str(exc)
    return None


class BadRequest(Exception):
    def __init__(self, answer: ErrorAnswer) -> None:
        super().__init__(answer.brief)
        self.answer = answer


def parse_body(method: str, content: bytes, content_type: str) -> dict[str, Any] | None:
    """Validate what routing needs from the body; anything else is the upstream's business."""
    if method != "POST" or not content:
        return None
    if "json" not in content_type and content.lstrip()[:1] != b"{":
        return None
    try:
        doc = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(errors.bad_request("the request body is not valid JSON")) from None
    if not isinstance(doc, dict):
        raise BadRequest(errors.bad_request("the request body must be a JSON object"))
    if "model" in doc and not isinstance(doc["model"], str):
        raise BadRequest(errors.bad_request("`model` must be a string"))
    if "stream" in doc and not isinstance(doc["stream"], bool) and doc["stream"] is not None:
        raise BadRequest(errors.bad_request("`stream` must be a boolean"))
    return doc


class AccountPool:
    def __init__(self) -> None:
        self.view: PoolView | None = None
        self.writer: MetricsWriter | None = None
        self.relay: Relay | None = None
        self.sweeper: UsageSweeper | None = None
        self.client: UpstreamClient | None = None
        self.control_client: httpx.AsyncClient | None = None
        self._publisher: asyncio.Task | None = None
        self.throttle = FailedAuthThrottle()
        self._client_keys: dict[str, str | None] = {}
        self._connect_keys: dict[str, str] = {}
        self._running = asyncio.Event()
        self._stopped = False
        self._max_body = 0
        self._require_keys = True
        self._fault_inject = ""
        self._upstream_hosts: frozenset[str] = frozenset()
        """Copies of the options read per request: `ctx.options.x` deep-copies the value on every read."""
        self._gc_before: tuple[int, int, int] | None = None
        """The collector's thresholds before the addon raised them (proxy/gc_tuning.py), restored in `done`."""

    # ------------------------------------------------------------ options

    def load(self, loader: Any) -> None:
        # httpx logs every upstream request at INFO and httpcore traces at DEBUG (mitmproxy sets the
        # root logger to DEBUG): each record becomes an `add_log` hook call on the event loop.
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
        addon_options.declare(loader)

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        addon_options.validate(opts, updated)
        self._max_body, self._require_keys = opts.pool_max_body, opts.pool_require_client_keys
        self._fault_inject = opts.pool_fault_inject
        self._upstream_hosts = frozenset(h.strip().lower() for h in opts.pool_upstream_hosts.split(",") if h.strip())
        if "pool_db" in updated or "pool_secrets" in updated or self.view is None:
            if self.relay is not None and self.view is not None:
                # The relay, the router and the metrics writer are bound to the pool they started with.
                raise exceptions.OptionsError("pool_db and pool_secrets cannot change while the proxy runs; "
                                              "restart mitmproxy to switch pools")
            self._open_pool()
        if self.relay is not None and "pool_gc_threshold" in updated:
            self._tune_collector()
        if self.relay is not None and updated & addon_options.ROUTER_OPTIONS:
            self.relay.router.config = self._router_config()
        if self.view is not None and updated & set(addon_options.COOLDOWN_OPTIONS):
            self.view.setting_defaults = addon_options.setting_defaults(opts)
            self.view.refresh(force=True)
        # Last, once the pool is open: setting an option re-enters `configure`, and an error above must not
        # leave the option half-changed.
        if "connection_strategy" in updated and opts.connection_strategy != "lazy":
            # Eager mode connects to the original server (the reverse target) as soon as a client connects,
            # before any hook has seen a request: where that host is unreachable every client is dropped,
            # and where it is reachable each connection opens a useless one. Pooled requests never go there.
            log.info("accountpool: setting connection_strategy=lazy (pooled requests never go to the original "
                     "server, so mitmproxy must not connect to it before a request is seen)")
            opts.connection_strategy = "lazy"

    def _open_pool(self) -> None:
        opts = ctx.options
        secrets_path = secrets_path_for(opts.pool_db, opts.pool_secrets or None)
        try:
            view = PoolView(opts.pool_db, secrets_path,
                            setting_defaults=addon_options.setting_defaults(opts))
        except Exception as exc:
            raise exceptions.OptionsError(f"accountpool: cannot open the pool: {exc}") from None
        if problem := write_probe(view.db.conn):
            view.close()
            raise exceptions.OptionsError(f"accountpool: the pool database {opts.pool_db} is not writable "
                                          f"({problem}): metrics and shared cooldowns would be lost; fix its "
                                          "permissions (and its directory's, for the -wal/-shm files)")
        if self.view is not None:
            self.view.close()
        self.view = view
        log.info("accountpool: pool %s with %d accounts", opts.pool_db, len(view.accounts))

    def running(self) -> None:
        opts = ctx.options
        assert self.view is not None
        self.writer = MetricsWriter(opts.pool_db, flush_interval=opts.pool_metrics_flush_ms / 1000,
                                    retention_s=lambda: self.view.settings.retention_days * 86_400 if self.view
                                    else 7 * 86_400)
        self.writer.start()
        self.client = UpstreamClient()
        self.relay = Relay(Router(self.view, self.writer, self._router_config(), self.client))
        _spawn(self.relay.start(), "accountpool-relay")
        self._running.set()
        self._tune_collector()
        self._deepen_accept_queues()
        if (servers := _proxy_servers()) is not None:
            servers.changed.connect(self._deepen_accept_queues)  # a mode added at run time listens anew
        self._publisher = _spawn(self.relay.router.publish_inflight_every(INFLIGHT_CHECK_S), "accountpool-inflight")
        if opts.pool_usage_sweep > 0:
            self.control_client = httpx.AsyncClient(trust_env=False, follow_redirects=False)
            self.sweeper = UsageSweeper(self.view, self.writer, self.control_client, url=opts.pool_usage_url,
                                        interval_s=opts.pool_usage_sweep)
            _spawn(self.sweeper.run(), "accountpool-usage-sweep")

    def _tune_collector(self) -> None:
        """Many open streams make CPython's default young-collection threshold stall the loop (proxy/gc_tuning.py)."""
        gc_tuning.restore(self._gc_before)
        self._gc_before = gc_tuning.raise_young_threshold(ctx.options.pool_gc_threshold)
        if self._gc_before is not None:
            log.debug("accountpool: young garbage-collection threshold raised from %d to %d",
                      self._gc_before[0], ctx.options.pool_gc_threshold)

    def _deepen_accept_queues(self) -> None:
        """mitmproxy listens with a backlog of 100: a burst of agents beyond it is dropped (proxy/listen_backlog.py)."""
        backlog = ctx.options.pool_listen_backlog
        proxyserver = ctx.master.addons.get("proxyserver")
        if backlog <= 0 or proxyserver is None:
            return
        changed = deepen_accept_queues((addr[1] for addr in proxyserver.listen_addrs()), backlog)
        if changed:
            log.debug("accountpool: accept queue of %s raised to %d", ", ".join(f"{h}:{p}" for h, p in changed),
                      backlog)

    @staticmethod
    def _router_config() -> RouterConfig:
        opts = ctx.options
        return RouterConfig(chatgpt_base=opts.pool_chatgpt_base_url, token_url=opts.pool_oauth_token_url,
                            max_attempts=opts.pool_max_attempts, refresh_margin_s=opts.pool_refresh_margin,
                            hold_metadata_events=opts.pool_hold_metadata_events,
                            connect_timeout_s=opts.pool_connect_timeout, header_timeout_s=opts.pool_header_timeout,
                            max_wait_s=opts.pool_max_wait, max_waiting=opts.pool_max_waiting)

    def done(self) -> asyncio.Task | None:
        """Stop the writer (drains it) and close the relay and the HTTP sessions.

        A plain function, because a script reload calls `done` synchronously; the closing runs in a
        task that it returns. mitmproxy awaits an awaitable a hook returns (`invoke_addon`), so at
        shutdown the loop does not stop before the sockets and sessions are closed, and on a reload
        the task runs on while the new addon starts with its own relay."""
        task = None
        if (servers := _proxy_servers()) is not None:
            servers.changed.disconnect(self._deepen_accept_queues)
        if self._publisher is not None:
            self._publisher.cancel()
            self._publisher = None
        if self.relay is not None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                task = _spawn(_close(self.relay, self.client, self.control_client), "accountpool-close")
        self.relay = self.client = self.control_client = None
        self._stopped = True
        gc_tuning.restore(self._gc_before)
        self._gc_before = None
        if self.writer is not None:
            self.writer.stop()
        if self.view is not None:
            self.view.close()
        return task

    # ------------------------------------------------------------ hooks

    def http_connect(self, flow: http.HTTPFlow) -> None:
        key = proxy_auth_key(flow.request.headers.get("proxy-authorization"))
        if key:
            self._connect_keys[flow.client_conn.id] = key
            del flow.request.headers["proxy-authorization"]

    def client_disconnected(self, client: Any) -> None:
        self._connect_keys.pop(client.id, None)

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response or flow.error or not flow.live or not self._in_scope(flow):
            return None
        if self.relay is None and not self._stopped:
            # mitmproxy listens before it calls `running`, where the relay starts: a client that connects
            # at once waits for it here (mitmproxy awaits what a hook returns) instead of being dropped.
            return self._requestheaders_once_running(flow)
        self._take_in(flow)
        return None

    async def _requestheaders_once_running(self, flow: http.HTTPFlow) -> None:
        try:
            await asyncio.wait_for(self._running.wait(), STARTUP_WAIT_S)
        except TimeoutError:
            pass  # _point_at_relay kills the flow: fail closed
        self._take_in(flow)

    def _take_in(self, flow: http.HTTPFlow) -> None:
        """Mark the flow pooled, point it at the relay, take the client key out, refuse what is too big."""
        flow.metadata[POOLED] = True
        try:
            self._point_at_relay(flow)
            # Take the client's key out of the flow before mitmweb sees it: one pass over the header fields.
            headers = flow.request.headers
            taken: dict[bytes, list[bytes]] = {}
            kept = []
            length = None
            for field in headers.fields:
                name = field[0].lower()
                if name in _KEY_FIELDS:
                    taken.setdefault(name, []).append(field[1])
                    continue
                if name == b"content-length" and length is None:
                    length = _text(field[1])
                kept.append(field)
            key = None
            if taken:
                headers.fields = tuple(kept)
                proxy_auth = taken.get(b"proxy-authorization")
                key = proxy_auth_key(_joined(proxy_auth)) if proxy_auth else None
            key = key or self._connect_keys.get(flow.client_conn.id)
            for name in _CLIENT_KEY_FIELDS:
                if values := taken.get(name):
                    key = key or bearer_value(_joined(values))
            self._client_keys[flow.id] = key
            if length and length.isdigit() and int(length) > self._max_body:
                self._answer(flow, errors.bad_request(
                    f"request body of {length} bytes exceeds the limit of {self._max_body}",
                    status=413, code="request_too_large"))
            elif flood := header_flood(flow.request.headers):
                # Refused here: forwarded, a flood makes upstreams drop the connection, which would cool
                # down every account in turn (one bad client request taking the whole pool out).
                self._answer(flow, errors.bad_request(flood, status=431, code="request_headers_too_large"))
        except Exception as exc:
            log.exception("accountpool: requestheaders failed")
            self._answer(flow, errors.internal_error(type(exc).__name__))

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get(REFUSED) and flow.request.raw_content:
            # Refused in `requestheaders` (too large by Content-Length): mitmproxy read the body afterwards anyway.
            _drop_body(flow)
        if not flow.metadata.get(POOLED) or flow.response or flow.error or not flow.live:
            return
        try:
            admitted = await self._admit(flow)
            if answers_whole(admitted):
                await self._answer_whole(flow, admitted)
            else:
                await self._hand_to_relay(flow, admitted)
        except BadRequest as exc:
            self._answer(flow, exc.answer)
        except Exception as exc:
            log.exception("accountpool: request hook failed; answering with an error, not forwarding")
            self._answer(flow, errors.internal_error(type(exc).__name__))

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get(POOLED) and flow.response is not None:
            flow.response.stream = True
            self._show_as_sent(flow)

    @staticmethod
    def _show_as_sent(flow: http.HTTPFlow) -> None:
        """For mitmweb and flow files: the URL, headers and body the client sent (the relay is an internal
        detail; the request has left for it already) and, in the comment, the account that served."""
        _restore_request(flow)
        if destination := flow.metadata.get(DESTINATION):
            scheme, flow.request.data.host, flow.request.data.port = destination
            flow.request.data.scheme = scheme.encode()
        served_by = flow.response.headers.get("x-accountpool-account") if flow.response else None
        if served_by:
            flow.comment = f"accountpool: served by {served_by}"

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get(POOLED):
            self._client_keys.pop(flow.id, None)
            _restore_request(flow)

    # ------------------------------------------------------------ admission

    def _point_at_relay(self, flow: http.HTTPFlow) -> None:
        """Fail closed: from here on, a pooled flow that slips through unanswered reaches the relay,
        which refuses anything without a ticket, never the real upstream."""
        if self.relay is None:
            flow.kill()
            return
        # On `data`, not through the `host` property: that would also rewrite the Host header (twice per
        # request, with the way back) for a relay that ignores it; the client's Host header stays as sent.
        data = flow.request.data
        flow.metadata[DESTINATION] = (flow.request.scheme, data.host, data.port)
        data.scheme, data.host, data.port = b"http", "127.0.0.1", self.relay.port

    def _in_scope(self, flow: http.HTTPFlow) -> bool:
        """Reverse mode: everything that reaches the proxy is meant for the pool (unknown paths get a 404 after
        the key check). Other modes: the configured API hosts' pooled paths; all else passes through."""
        if isinstance(flow.client_conn.proxy_mode, ReverseMode):
            return True
        if flow.request.pretty_host.lower() not in self._upstream_hosts:
            return False
        path = flow.request.path
        # A traversal that starts inside a pooled prefix is pooled, so that it is refused rather than passed on;
        # the full check (decoding, dot segments) runs only for the rare path that is not plainly pooled.
        return is_pooled(path.partition("?")[0]) or check_path(path).verdict is PathVerdict.POOLED

    async def _admit(self, flow: http.HTTPFlow) -> Admitted:
        assert self.view is not None and self.relay is not None and self.writer is not None
        if self._fault_inject == "request_hook":
            raise RuntimeError("injected fault (pool_fault_inject=request_hook)")
        now = time.time()
        self.view.refresh()
        key_id, label = self._authenticate(flow, now)
        req = flow.request
        checked = check_path(req.path)
        if checked.verdict is PathVerdict.ESCAPES:
            raise BadRequest(errors.bad_request("the request path leaves the pooled API (/v1/, /backend-api/codex/) "
                                                "once its dot segments are resolved", code="invalid_path"))
        if checked.verdict is PathVerdict.UNKNOWN:
            raise BadRequest(errors.bad_request(f"no pooled API at {req.path.partition('?')[0][:200]!r}; the pool "
                                                "serves /v1/… and /backend-api/codex/…", status=404,
                                                code="unknown_path"))
        if req.headers.get("upgrade", "").lower() == "websocket":
            # Codex CLI opens the Responses API as a WebSocket first and falls back to HTTP at once only on a
            # 426 (any other answer it retries five times). Forwarded, the upgrade would take an account's
            # credential upstream for a transport the relay cannot carry, choose an account for a whole
            # session and leave failover out.
            raise BadRequest(errors.bad_request("the pool relays HTTP only, not WebSockets; use HTTP (POST, "
                                                "with SSE for streams)", status=426, code="websocket_unsupported"))
        try:
            # Decoded (gzip, deflate, br, zstd: Codex may compress): the relay sends the plain body upstream.
            content = req.get_content(strict=True) or b""
        except ValueError:
            raise BadRequest(errors.bad_request("the request body's content-encoding could not be decoded",
                                                status=415)) from None
        if len(content) > self._max_body:
            raise BadRequest(errors.bad_request(
                f"request body of {len(content)} bytes exceeds the limit of {self._max_body}",
                status=413, code="request_too_large"))
        # One pass over the fields: the list the router forwards, and the few values admission reads.
        headers: list[tuple[str, str]] = []
        wanted: dict[str, str] = {}
        for name_b, value_b in req.headers.fields:
            name, value = _text(name_b), _text(value_b)
            headers.append((name, value))
            lname = name.lower()
            if lname in _ADMISSION_HEADERS:
                wanted[lname] = f"{wanted[lname]}, {value}" if lname in wanted else value
        body = parse_body(req.method, content, wanted.get("content-type", ""))
        pinned = wanted.get("chatgpt-account-id")
        if pinned and not any(pinned in (a.id, a.upstream_account_id) for a in self.view.accounts):
            pinned = None  # a client's own login id that names no pool account does not pin (README)
        admitted = Admitted(
            request_id="req_" + secrets.token_hex(8), started_at=req.timestamp_start or now,
            t0=time.monotonic() - max(0.0, now - (req.timestamp_start or now)), method=req.method,
            path=checked.path, endpoint=checked.path.partition("?")[0], client_label=label,
            headers=headers, body=content, json_body=body,
            model=body.get("model") if body else None, stream=bool(body and body.get("stream")),
            session_key=session_key(wanted, body), pinned_account=pinned)
        if key_id:
            self.writer.submit(ClientKeyUse(key_id, now))
        flow.comment = f"accountpool: {admitted.request_id} from {label or 'anonymous'}"
        return admitted

    async def _hand_to_relay(self, flow: http.HTTPFlow, admitted: Admitted) -> None:
        assert self.relay is not None
        if not self.relay.ready.is_set():
            await asyncio.wait_for(self.relay.ready.wait(), 10)
        ticket = self.relay.admit(admitted)
        # The relay works from the admitted body, so the hop carries the head only: Codex sends the whole
        # conversation with every turn (hundreds of KiB), which mitmproxy would otherwise copy through the
        # loopback for the relay to skip. The flow gets its body and headers back with the response headers.
        req = flow.request
        flow.metadata[HELD_BACK] = (req.headers.fields, req.data.content)
        req.data.content = b""
        req.headers.fields = (*(f for f in req.headers.fields if f[0].lower() not in _BODY_FRAMING),
                              (b"content-length", b"0"), (TICKET_HEADER.encode(), ticket.encode()))

    async def _answer_whole(self, flow: http.HTTPFlow, admitted: Admitted) -> None:
        """Route here and set `flow.response`: mitmproxy never opens a server connection for the flow."""
        assert self.relay is not None
        # The client may leave while its request waits for an account: mitmproxy keeps reading its side during
        # the hook and clears CAN_READ at EOF.
        answer = BufferedResponder(client_left=lambda: not flow.client_conn.state & ConnectionState.CAN_READ)
        try:
            await self.relay.router.serve(admitted, answer)
        except Exception:
            # The router has recorded the request (outcome internal_error); the client gets a clear error.
            log.exception("accountpool: routing %s failed", admitted.request_id)
            answer.abort()
        status, headers, body = answer.result()
        flow.response = http.Response.make(status, body, [
            (k.encode("latin-1", "replace"), v.encode("utf-8", "replace")) for k, v in headers])
        self._show_as_sent(flow)

    def _authenticate(self, flow: http.HTTPFlow, now: float) -> tuple[str | None, str | None]:
        assert self.view is not None
        key = self._client_keys.pop(flow.id, None)
        if not self._require_keys:
            return None, None
        match = match_client_key(key, self.view.client_keys) if key else None
        if match is not None:
            return match  # a valid key is never throttled (proxy/client_auth.py says why)
        source = flow.client_conn.peername[0] if flow.client_conn.peername else "?"
        fingerprint = key_fingerprint(key) if key else None
        if throttled := self.throttle.check(fingerprint, source, now):
            raise BadRequest(errors.openai_error(
                429, f"accountpool: {throttled.message}", type="rate_limit_error", code="client_auth_throttled",
                outcome=errors.FailureClass.CLIENT_AUTH_FAILED,
                headers=(("retry-after", str(throttled.retry_after_s)),)))
        self.throttle.failed(fingerprint, source, now)
        raise BadRequest(errors.client_auth_error("missing client key" if not key else "unknown or revoked client key"))

    def _answer(self, flow: http.HTTPFlow, answer: ErrorAnswer) -> None:
        """Answer the client ourselves (the flow is never forwarded) and record the request.

        The refused request keeps no body in the flow: a 50 MB body refused with 413 would otherwise be
        saved whole by `mitmdump -w` and held by mitmweb. The flow comment keeps its size."""
        req = flow.request
        request_id = "req_" + secrets.token_hex(8)
        try:
            flow.response = http.Response.make(answer.status, answer.body,
                                               [(k.encode(), v.encode()) for k, v in answer.headers] +
                                               [(b"x-accountpool-request-id", request_id.encode())])
        except Exception:
            log.exception("accountpool: could not build the error answer; killing the flow instead")
            flow.kill()
        flow.metadata[REFUSED] = f"accountpool: {request_id} refused ({answer.status})"
        size = _drop_body(flow)
        self._client_keys.pop(flow.id, None)
        if self.writer is None:
            return
        now = time.time()
        started = req.timestamp_start or now
        self.writer.submit(RequestRecord(row={
            "id": request_id, "started_at": started, "finished_at": now,
            "client_key_label": None, "method": req.method, "endpoint": req.path.split("?", 1)[0],
            "stream": 0, "request_bytes": size, "attempts": 0, "status": answer.status,
            "outcome": answer.outcome.value, "failure_brief": answer.brief[:300],
            "total_ms": round((now - started) * 1000, 2)}))


def _proxy_servers() -> Any:
    """mitmproxy's running servers (their `changed` signal fires when a mode starts listening), if any."""
    return getattr(ctx.master.addons.get("proxyserver"), "servers", None)


def _restore_request(flow: http.HTTPFlow) -> None:
    """Put back the headers and body that `_hand_to_relay` kept off the loopback hop."""
    if held := flow.metadata.pop(HELD_BACK, None):
        flow.request.headers.fields, flow.request.data.content = held


def _drop_body(flow: http.HTTPFlow) -> int:
    """Empty a refused request's body (the comment keeps its size); returns the size, read or announced."""
    req = flow.request
    length = req.headers.get("content-length", "")
    size = len(req.raw_content) if req.raw_content is not None else int(length) if length.isdigit() else 0
    # `data.content`, not `.content`: that would also rewrite the Content-Length header the client sent.
    req.data.content = b""
    flow.comment = flow.metadata[REFUSED] + (f"; request body of {size} bytes dropped" if size else "")
    return size


_KEEP_REF = "keep_ref" in create_task.__code__.co_varnames


def _spawn(coro: Any, name: str) -> asyncio.Task:
    if _KEEP_REF:
        return create_task(coro, name=name, keep_ref=True)
    return create_task(coro, name=name)


async def _close(relay: Relay, client: UpstreamClient | None, control_client: httpx.AsyncClient | None) -> None:
    await relay.stop()
    relay.router.trials.close()
    if client is not None:
        await client.close()
    if control_client is not None:
        await control_client.aclose()

os.environ.setdefault("ACCOUNTPOOL_ADDON", "1")

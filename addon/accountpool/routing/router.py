"""The attempts of one client request: choose, send, judge, fail over, stream (docs/BEHAVIOUR.md §7–§11).

Runs inside the relay (see docs/DESIGN.md). Decisions come from the pure modules
(`selection`, `classify`, `usage_headers`, `sse_usage`); this module only sequences them,
keeps health current and reports metrics. The client sees exactly one answer: the first
upstream success streamed through, an upstream `invalid_request` as it is, or one aggregated
error once every candidate failed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from accountpool.models import Account, AccountHealth, AccountKind, FailureClass, SkipReason
from accountpool.routing import errors, recovery
from accountpool.routing.admission_queue import POLL_S, AdmissionQueue, Waiter, earliest_available, refusal
from accountpool.routing.admitted import Admitted
from accountpool.routing.errors import FailureLog
from accountpool.routing.response_shapers import AttemptPlan, plan_attempt
from accountpool.routing.selection import choose_candidates
from accountpool.storage.metrics_writer import (
    HealthUpdate,
    InflightUpdate,
    MetricsWriter,
    RequestRecord,
    StateUpdate,
    TrialRelease,
)
from accountpool.storage.pool_view import SEQUENTIAL_KEY, PoolView
from accountpool.storage.secrets_store import Credentials
from accountpool.storage.trial_claims import TRIAL_RECHECK_S, TrialClaims, TrialGate
from accountpool.upstream.classify import classify_attempt, cooldown_until, error_brief
from accountpool.upstream.oauth import RefreshError
from accountpool.upstream.sse_usage import StreamWatcher, TokenUsage, usage_from_json_body
from accountpool.upstream.token_rotation import access_expiry, rotate_tokens
from accountpool.upstream.upstream_client import LocalLimitError, UpstreamClient, UpstreamError, UpstreamResponse
from accountpool.upstream.usage_headers import carries_windows, parse_usage_headers, same_windows

log = logging.getLogger("accountpool.router")

ERROR_BODY_LIMIT = 1024 * 1024
HOLD_LIMIT = 256 * 1024
WHOLE_READ_LIMIT = 64 * 1024 * 1024
USAGE_REFRESH_S = 1.0
"""An account's `x-ratelimit-*` counters are stored at most this often, and its Codex windows as often only
while their used % and length stay as they were. `x-ratelimit-remaining-*` moves with every answer and steers no
choice (the dashboard and the forecasts show it), so storing it for every answer cost a header parse, a health
copy and a write per request (3-7 % of a short answer's CPU, benchmarks/README.md) for a second's freshness. A
window's used % does steer routing (order, the sequential threshold): a change is taken from the very answer."""
USAGE_SCAN_LIMIT = 8 * 1024 * 1024
SILENCE_CHECK_MAX_S = 5.0
"""Streams are checked for silence this often at most (a quarter of `header_timeout_s` when that is shorter)."""
OVERLOAD_LOG_EVERY_S = 10.0
"""Out of file descriptors comes in bursts: one warning per this many seconds, not one per request."""
CAPACITY_RECHECK_S = 1.0
"""A request waiting for file descriptors tries again at least this often."""
INFLIGHT_AFTER_S = 0.2
"""A request appears in `inflight` (the dashboard's "in flight" list) once it has run this long."""
TRIAL_WAIT_S = TRIAL_RECHECK_S
"""A half-open account whose trial is in flight counts as available this soon (for the wait decision and
Retry-After); waiters are woken when a trial of this process ends, and re-check another process's this often."""


class ClientAnswer(Protocol):
    """Where the chosen answer goes: the relay's HTTP response (streamed) or the addon's buffer (whole)."""

    committed: bool
    """Set once the status is chosen: after that no other account may answer."""
    finished: bool
    client_gone: bool
    gone_reason: str
    streams: bool
    """False when the client gets the answer in one piece: then a body is read whole before commit."""

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None: ...
    def disconnected(self) -> bool:
        """Whether the client has gone while nothing was sent yet (a queued request then leaves the queue)."""
        ...
    async def send(self, data: bytes) -> None: ...
    async def end(self) -> None: ...
    async def whole(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None: ...
    def abort(self) -> None: ...


@dataclass
class RouterConfig:
    chatgpt_base: str
    token_url: str
    max_attempts: int = 5
    refresh_margin_s: float = 300.0
    hold_metadata_events: bool = True
    connect_timeout_s: float = 10.0
    header_timeout_s: float = 300.0
    max_wait_s: float = 20.0
    """How long a request may wait for an account that is back at a known time (0: never wait)."""
    max_waiting: int = 256


@dataclass(slots=True)
class Run:
    """Everything measured about one client request, turned into its metrics rows at the end."""

    admitted: Admitted
    attempts: list[dict[str, Any]] = field(default_factory=list)
    account_id: str | None = None
    status: int | None = None
    outcome: FailureClass = FailureClass.OK
    brief: str | None = None
    headers_at: float | None = None
    first_chunk_at: float | None = None
    usage: TokenUsage | None = None
    phase: str = "received"
    phase_account_id: str | None = None
    published: bool = False
    """Whether `inflight` holds a row for this request (see Router.publish_inflight)."""
    waiter: Waiter | None = None
    wait_deadline: float = 0.0
    """Monotonic time when this request stops waiting (its `pool_max_wait` is used up)."""
    queue_wait_s: float = 0.0
    gone_while_queued: bool = False
    trials: dict[str, str] = field(default_factory=dict)
    """account id → owner token of the half-open trial claims this request holds."""
    streaming_from: UpstreamResponse | None = None
    """The upstream answer being streamed after commit, watched for silence (see Router.cut_silent_streams)."""
    chunks_seen: int = 0
    quiet_mark: int = -1
    quiet_since: float = 0.0

    def ms_since_start(self, t: float | None) -> float | None:
        return round((t - self.admitted.t0) * 1000, 2) if t is not None else None


class AttemptFailed(Exception):
    def __init__(self, cls: FailureClass, brief: str, until: float | None = None) -> None:
        super().__init__(brief)
        self.cls, self.brief, self.until = cls, brief, until


class ProxyOverloaded(Exception):
    """This process ran out of its own resources before reaching the upstream: no account is tried or blamed."""


class Router:
    def __init__(self, view: PoolView, writer: MetricsWriter, config: RouterConfig,
                 client: UpstreamClient, trials: TrialClaims | None = None) -> None:
        self.view = view
        self.writer = writer
        self.config = config
        self.client = client
        self.trials = TrialGate(trials or TrialClaims(view.db_path),
                                lambda account_id, owner: writer.submit(TrialRelease(account_id, owner)))
        self.queue = AdmissionQueue()
        self._refresh_locks: dict[str, asyncio.Lock] = {}
        self._overload_logged_at = -OVERLOAD_LOG_EVERY_S
        self._capacity_waiters = 0
        self._running: dict[str, Run] = {}
        self._unpublished: deque[Run] = deque()
        """Runs in the order they started, until they end or get their `inflight` row: the periodic check looks
        at the oldest few instead of every open request (a fleet holds thousands of streams open)."""

    async def publish_inflight_every(self, interval_s: float) -> None:
        """The loop that makes long requests visible in `inflight` and cuts silent streams (runs for the proxy's
        lifetime)."""
        silence_checked = time.monotonic()
        while True:
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            self.publish_inflight(now)
            if now - silence_checked >= min(SILENCE_CHECK_MAX_S, self.config.header_timeout_s / 4):
                silence_checked = now
                self.cut_silent_streams(now)

    def cut_silent_streams(self, now: float) -> None:
        """Cut streams whose upstream has sent nothing for `header_timeout_s`.

        While it streams, aiohttp's read timer is off (`UpstreamResponse.stop_read_timer`): re-arming it for
        every token cost more than this pass over the open streams every few seconds. A stream is cut within
        `header_timeout_s` plus one check interval of its last byte, and ends like any cut stream (an explicit
        `error` event, outcome `stream_interrupted`)."""
        limit = self.config.header_timeout_s
        for run in self._running.values():
            if run.streaming_from is None:
                continue
            if run.chunks_seen != run.quiet_mark:
                run.quiet_mark, run.quiet_since = run.chunks_seen, now
            elif now - run.quiet_since >= limit:
                run.streaming_from.cut()

    def publish_inflight(self, now: float) -> None:
        """Requests running for INFLIGHT_AFTER_S or more get their `inflight` row.

        Most requests end well before that: they cost the writer one row (`requests`) instead of an
        insert, two updates and a delete of a row nobody could have seen on the dashboard anyway."""
        waiting = self._unpublished
        while waiting and (now - waiting[0].admitted.t0 >= INFLIGHT_AFTER_S
                           or self._running.get(waiting[0].admitted.request_id) is not waiting[0]):
            run = waiting.popleft()
            if not run.published and self._running.get(run.admitted.request_id) is run:
                run.published = True
                self._submit_phase(run)

    # ------------------------------------------------------------ one request

    async def serve(self, admitted: Admitted, responder: ClientAnswer) -> None:
        run = Run(admitted)
        self._running[admitted.request_id] = run
        self._unpublished.append(run)
        failures = FailureLog()
        tried: set[str] = set()
        skipped = None
        overloaded: str | None = None
        try:
            while True:
                latest: list[SkipReason] = []
                while len(run.attempts) < self.config.max_attempts and not responder.committed:
                    now = time.time()
                    selection = choose_candidates(
                        self.view.accounts, self.view.health, settings=self.view.settings, path=admitted.path,
                        model=admitted.model, now=now, pinned_account_id=admitted.pinned_account,
                        affinity_account_id=self.view.affinity(admitted.session_key),
                        current_account_id=self.view.sequential_current)
                    candidates = [a for a in selection.candidates if a.id not in tried]
                    account, held = await self._first_ready(run, candidates, now)
                    latest = selection.skipped + held
                    if skipped is None:
                        skipped = latest
                    if account is None:
                        break
                    self._leave_queue(run)
                    tried.add(account.id)
                    try:
                        await self._try_account(run, account, responder)
                    except ProxyOverloaded as exc:
                        overloaded = str(exc)
                        tried.discard(account.id)  # nothing was sent: not a try of this account
                        break
                    except AttemptFailed as failure:
                        failures.add(account.display, failure.cls, failure.brief, failure.until)
                        run.outcome, run.brief = failure.cls, failure.brief
                        continue
                    finally:
                        self._end_trial(run, account.id)
                    self._served_by(run, account)
                if responder.committed or len(run.attempts) >= self.config.max_attempts:
                    break
                if overloaded is not None:
                    if not await self._wait_for_capacity(run, responder):
                        break
                    overloaded = None
                    continue
                if not await self._wait_for_account(run, responder, latest):
                    break
                # Back from the queue: every account is a candidate again, the ones this request already tried
                # included (their cooldown has ended and nothing was sent to the client; README).
                tried.clear()
            self._leave_queue(run)
            if not responder.committed:
                if overloaded is not None:
                    answer = errors.proxy_overloaded(overloaded)
                else:
                    cooling = {s.account_id: self.view.health_of(s.account_id).cooldown_class or ""
                               for s in skipped or [] if s.reason == "cooldown"}
                    answer = errors.pool_exhausted(failures, skipped or [], now=time.time(), cooldown_classes=cooling)
                run.status, run.outcome, run.brief = answer.status, answer.outcome, answer.brief
                await responder.whole(answer.status, [*answer.headers,
                                                      ("x-accountpool-request-id", admitted.request_id)], answer.body)
                if run.gone_while_queued:
                    run.outcome, run.brief = FailureClass.CLIENT_GONE, "client disconnected while queued"
        except Exception as exc:
            # The relay server answers 500 (or cuts a committed stream); the row says why.
            if run.outcome is FailureClass.OK or not responder.committed:
                run.outcome, run.brief = FailureClass.INTERNAL_ERROR, f"internal error: {type(exc).__name__}"
                if not responder.committed:
                    run.status = 500
            raise
        finally:
            self._leave_queue(run)
            for account_id in list(run.trials):
                self._end_trial(run, account_id)
            self._record(run)
            if self._capacity_waiters:
                self.queue.notify()  # this request's connections are closing: a waiter for descriptors may go

    # ------------------------------------------------------------ half-open trials and the queue

    async def _first_ready(self, run: Run, candidates: list[Account],
                           now: float) -> tuple[Account | None, list[SkipReason]]:
        """The first candidate that may take this request now, and the half-open ones it had to pass over.

        A half-open account takes the request only if this request wins its trial claim (`trial_claims`)."""
        held: list[SkipReason] = []
        for account in candidates:
            if not recovery.needs_trial(self.view.health_of(account.id), now):
                return account, held
            if (owner := await self.trials.claim(account.id, now)) is not None:
                run.trials[account.id] = owner
                return account, held
            held.append(SkipReason(account_id=account.id, label=account.label, reason="cooldown",
                                   detail="half-open: a trial request is testing it", until=now + TRIAL_WAIT_S))
        return None, held

    def _end_trial(self, run: Run, account_id: str) -> None:
        """Release this request's trial claim (after its health outcome, through the writer) and wake waiters."""
        owner = run.trials.pop(account_id, None)
        if owner is not None:
            self.trials.release(account_id, owner)
            self.queue.notify()

    def _on_commit(self, run: Run, account: Account) -> None:
        """The account answers this request: a recovering account is healthy again, its trial is over."""
        h = self.view.health_of(account.id)
        if (changes := recovery.judge_success(h, time.time())) is not None:
            self._put_health(h.model_copy(update=changes))
        self._end_trial(run, account.id)

    async def _wait_for_account(self, run: Run, responder: ClientAnswer, skipped: list[SkipReason]) -> bool:
        """Wait in the queue until an account may be back (True: choose again), or say no at once (False).

        True means this request holds the queue's turn (`AdmissionQueue`): it re-runs the selection before any
        later arrival, and passes the turn on by leaving the queue (it has an account) or by coming back here."""
        if run.waiter is not None:
            self.queue.done_turn(run.waiter)
        now, mono = time.time(), time.monotonic()
        classes = {s.account_id: self.view.health_of(s.account_id).cooldown_class or ""
                   for s in skipped if s.reason == "cooldown"}
        earliest = earliest_available(skipped, now, classes)
        waited_before = run.wait_deadline > 0
        why = refusal(earliest, now=now, wait_left_s=self._wait_left(run, mono), waiting=len(self.queue),
                      max_waiting=self.config.max_waiting, queued=waited_before)
        if why is not None or earliest is None:
            if waited_before:
                log.info("request %s stops waiting: %s", run.admitted.request_id, why)
            return False
        self._enter_queue(run, mono)
        target = mono + (earliest - now)
        self.queue.wake_at(target)
        return await self._take_turn(run, responder, target, give_up_at=None)

    async def _wait_for_capacity(self, run: Run, responder: ClientAnswer) -> bool:
        """Out of file descriptors (`ProxyOverloaded`): wait in the same queue, on the same budget, for a request
        to end and free its connections, then try again (True); False: the client gets 503 `proxy_overloaded`.

        A fleet at `ulimit -n` frees four descriptors whenever one of its streams ends, so a short wait serves a
        request the limit would have refused; every ending request gives the next waiter its turn, and a waiter
        also retries every `CAPACITY_RECHECK_S` (descriptors may close without a request ending)."""
        if run.waiter is not None:
            self.queue.done_turn(run.waiter)
        mono = time.monotonic()
        if self._wait_left(run, mono) <= 0 or (run.waiter is None and len(self.queue) >= self.config.max_waiting):
            return False
        self._enter_queue(run, mono)
        self._capacity_waiters += 1
        try:
            return await self._take_turn(run, responder, min(mono + CAPACITY_RECHECK_S, run.wait_deadline),
                                         give_up_at=run.wait_deadline)
        finally:
            self._capacity_waiters -= 1

    def _wait_left(self, run: Run, mono: float) -> float:
        """The wait budget is per request: a second wait (for another account, or for descriptors) uses what is
        left of `pool_max_wait`."""
        return run.wait_deadline - mono if run.wait_deadline > 0 else self.config.max_wait_s

    def _enter_queue(self, run: Run, mono: float) -> None:
        if run.waiter is None:
            run.waiter = self.queue.enter()
            if run.wait_deadline <= 0:
                run.wait_deadline = mono + self.config.max_wait_s
            self._phase(run, "queued", None)

    async def _take_turn(self, run: Run, responder: ClientAnswer, target: float, *,
                         give_up_at: float | None) -> bool:
        """Wait for this request's turn (True), its client leaving or `give_up_at` (False)."""
        waiter = run.waiter
        assert waiter is not None
        while True:
            turn = await waiter.wait(POLL_S)
            if responder.disconnected():
                run.gone_while_queued = True
                return False
            if turn:
                self.view.refresh()
                return True
            mono = time.monotonic()
            if give_up_at is not None and mono >= give_up_at:
                return False
            if mono > target + POLL_S:
                # The pass this waiter's time asked for did not come (its timer gave way to an earlier one that
                # found the pool unchanged): ask for one now. The turn still goes in arrival order.
                self.queue.notify()
                target = mono + CAPACITY_RECHECK_S

    def _leave_queue(self, run: Run) -> None:
        if run.waiter is not None:
            run.queue_wait_s += time.monotonic() - run.waiter.entered
            run.waiter.leave()
            run.waiter = None

    def _served_by(self, run: Run, account: Account) -> None:
        self.view.remember_affinity(run.admitted.session_key, account.id)
        if self.view.settings.mode == "sequential" and self.view.sequential_current != account.id:
            self.view.sequential_current = account.id
            self.writer.submit(StateUpdate(SEQUENTIAL_KEY, account.id))

    # ------------------------------------------------------------ one account

    async def _try_account(self, run: Run, account: Account, responder: ClientAnswer) -> None:
        creds = self.view.credentials(account.id)
        if creds is None or not (creds.api_key or creds.access_token):
            raise self._fail(run, account, FailureClass.AUTH_FAILED, "no stored credentials for this account",
                             status=None, ms=0.0)
        refreshed = False
        if account.kind == AccountKind.CHATGPT:
            # The expiry of the token we hold, not the accounts row: that one lags behind a refresh.
            expires = access_expiry(creds) or account.access_expires_at
            if expires and expires - time.time() < self.config.refresh_margin_s:
                creds = await self._refresh(run, account, creds)
                refreshed = True
        while True:
            plan = plan_attempt(run.admitted, account, creds, chatgpt_base=self.config.chatgpt_base,
                                catalog_overrides=self.view.settings.model_overrides)
            cls = await self._send(run, account, plan, responder, refreshed=refreshed)
            if cls is FailureClass.AUTH_EXPIRED and not refreshed:
                creds = await self._refresh(run, account, creds)
                refreshed = True
                continue
            return

    async def _send(self, run: Run, account: Account, plan: AttemptPlan, responder: ClientAnswer, *,
                    refreshed: bool) -> FailureClass:
        """One upstream try. Returns OK (committed) or AUTH_EXPIRED (caller refreshes); raises AttemptFailed."""
        admitted = run.admitted
        started = time.monotonic()
        n = len(run.attempts) + 1
        self._phase(run, "retrying" if n > 1 else "waiting_headers", account.id)
        try:
            response = await self.client.send(admitted.method, plan.url, headers=plan.headers, body=plan.body,
                                              connect_timeout_s=self.config.connect_timeout_s,
                                              read_timeout_s=self.config.header_timeout_s)
            # Sent: a stream that runs for minutes need not hold the outbound headers and, for a login, the
            # re-serialised body (an agent's whole conversation); a retry plans its attempt afresh.
            plan.headers, plan.body = [], b""
        except LocalLimitError as exc:
            if (now := time.monotonic()) - self._overload_logged_at >= OVERLOAD_LOG_EVERY_S:
                self._overload_logged_at = now
                log.warning("accountpool: cannot open an upstream connection (%s); requests wait for a stream to "
                            "end (up to pool_max_wait), then get 503 proxy_overloaded; no account is blamed. Raise "
                            "`ulimit -n` for mitmproxy (each open stream holds four file descriptors).", exc)
            raise ProxyOverloaded(str(exc)) from None
        except UpstreamError as exc:
            raise self._fail(run, account, FailureClass.UPSTREAM_ERROR,
                             f"{exc} before response headers", status=None,
                             ms=_ms(started), refreshed=refreshed) from None
        try:
            self._observe_usage(account, response.headers)
            status = response.status
            if status >= 400:
                body = await response.read(ERROR_BODY_LIMIT)
                cls = classify_attempt(status, body, kind=account.kind, after_refresh=refreshed)
                if cls is FailureClass.AUTH_EXPIRED:
                    self._attempt_row(run, account, status, cls, started, refreshed)
                    return cls
                if cls is FailureClass.INVALID_REQUEST:
                    # Not the account's fault: the client gets the upstream's answer as it is.
                    self._attempt_row(run, account, status, cls, started, refreshed)
                    self._on_commit(run, account)
                    run.headers_at = time.monotonic()
                    run.account_id, run.status, run.outcome = account.id, status, cls
                    run.brief = error_brief(status, body)
                    headers = plan.shaper.client_headers(response.header_items(), account,
                                                         admitted.request_id, n)
                    await responder.whole(status, headers, body)
                    run.first_chunk_at = time.monotonic()
                    return FailureClass.OK
                raise self._fail(run, account, cls, error_brief(status, body), status=status, ms=_ms(started),
                                 refreshed=refreshed, headers=response.headers, body=body)
            await self._deliver(run, account, plan, response, responder, started=started, refreshed=refreshed)
            return FailureClass.OK
        finally:
            response.close()

    async def _deliver(self, run: Run, account: Account, plan: AttemptPlan, response: UpstreamResponse,
                       responder: ClientAnswer, *, started: float, refreshed: bool) -> None:
        """Stream a successful answer; before the first content event an in-band error still fails over."""
        admitted = run.admitted
        run.headers_at = time.monotonic()
        is_sse = "text/event-stream" in response.headers.get("content-type", "")
        watcher = StreamWatcher() if is_sse else None
        chunks = response.chunks()
        held: list[bytes] = []
        exhausted = False
        whole = plan.shaper.whole_answer
        if watcher is not None and (whole or self.config.hold_metadata_events):
            # Before committing, read ahead: the metadata events only (an in-band error there fails over
            # invisibly) or, when the client waits for one assembled answer anyway, all of it (so a cut or a
            # late in-band failure still fails over).
            exhausted = await self._read_ahead(run, account, chunks, watcher, held, whole=whole, started=started,
                                               refreshed=refreshed)
            if whole and not watcher.saw_terminal:
                raise self._fail(run, account, FailureClass.UPSTREAM_ERROR, "stream ended before its terminal event",
                                 status=200, ms=_ms(started), refreshed=refreshed)
        elif watcher is None and not responder.streams:
            # This client gets the answer whole anyway: read all of it before committing, so a cut fails over.
            exhausted = await self._read_ahead(run, account, chunks, None, held, whole=True, started=started,
                                               refreshed=refreshed)
        # Commit: from here on this account answers the client.
        # No attempt is planned after commit: a long stream need not hold the parsed body or the header list.
        admitted.json_body, admitted.headers = None, []
        self._attempt_row(run, account, response.status, FailureClass.OK, started, refreshed)
        self._on_commit(run, account)
        run.account_id, run.status, run.outcome = account.id, response.status, FailureClass.OK
        self._phase(run, "streaming", account.id)
        shaper = plan.shaper
        await responder.start(response.status, shaper.client_headers(
            response.header_items(), account, admitted.request_id, len(run.attempts)))
        body_copy = bytearray() if watcher is None and shaper.wants_usage_scan else None
        for chunk in held:
            if body_copy is not None and len(body_copy) < USAGE_SCAN_LIMIT:
                body_copy += chunk
            await self._forward(run, responder, shaper.feed(chunk))
        try:
            if not exhausted and responder.streams:
                response.stop_read_timer()
                run.streaming_from = response
            if not exhausted:
                async for chunk in chunks:
                    run.chunks_seen += 1
                    if watcher is not None:
                        watcher.watch(chunk)
                    elif body_copy is not None and len(body_copy) < USAGE_SCAN_LIMIT:
                        body_copy += chunk
                    await self._forward(run, responder, shaper.feed(chunk))
                    if responder.client_gone:
                        break
            await self._forward(run, responder, shaper.finish())
        except UpstreamError as exc:
            run.outcome = FailureClass.STREAM_INTERRUPTED
            run.brief = f"upstream stream cut after commit ({exc})"
            # An event stream can end with an explicit error event; any other body can only be cut short.
            tail = shaper.interrupted(run.brief) if is_sse else b""
            if tail:
                await self._forward(run, responder, tail)
                await responder.end()
            else:
                responder.abort()
            self._note_error(account, FailureClass.STREAM_INTERRUPTED, run.brief)
            return
        finally:
            run.streaming_from = None
            if watcher is not None:
                run.usage = watcher.usage or shaper.usage
                if watcher.inband_error and run.outcome is FailureClass.OK:
                    # A failure after content was already sent: recorded, and the account cools down.
                    cls, brief = watcher.inband_error
                    run.outcome, run.brief = cls, brief
                    self._cool_down(account, cls, {}, None, brief)
            elif body_copy is not None:
                run.usage = usage_from_json_body(bytes(body_copy))
            else:
                run.usage = shaper.usage
        if responder.client_gone:
            run.outcome, run.brief = FailureClass.STREAM_INTERRUPTED, responder.gone_reason
        await responder.end()

    async def _read_ahead(self, run: Run, account: Account, chunks: AsyncIterator[bytes],
                          watcher: StreamWatcher | None, held: list[bytes], *, whole: bool, started: float,
                          refreshed: bool) -> bool:
        """Hold chunks back until content (or, `whole`, the end); True when the upstream body is exhausted.

        Without a watcher (not an event stream) `whole` is the only mode. Past WHOLE_READ_LIMIT bytes the
        answer is committed as it is: a cut after that point can no longer fail over.
        """
        size = 0
        while True:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                return True
            except UpstreamError as exc:
                stage = "the answer was complete" if whole else "the first content event"
                raise self._fail(run, account, FailureClass.UPSTREAM_ERROR, f"{exc} before {stage}",
                                 status=200, ms=_ms(started), refreshed=refreshed) from None
            held.append(chunk)
            size += len(chunk)
            if watcher is not None:
                watcher.feed(chunk)
                if watcher.inband_error is not None and (whole or not watcher.first_content_seen):
                    cls, brief = watcher.inband_error
                    raise self._fail(run, account, cls, brief, status=200, ms=_ms(started), refreshed=refreshed)
                if not whole and (not watcher.only_metadata_seen or size > HOLD_LIMIT):
                    return False
            if size > WHOLE_READ_LIMIT:
                return False

    async def _forward(self, run: Run, responder: ClientAnswer, data: bytes) -> None:
        if data:
            if run.first_chunk_at is None:
                run.first_chunk_at = time.monotonic()
            await responder.send(data)

    # ------------------------------------------------------------ refresh

    async def _refresh(self, run: Run, account: Account, stale: Credentials) -> Credentials:
        """Single-flight: concurrent requests wait on one lock; other processes on the file lock."""
        lock = self._refresh_locks.setdefault(account.id, asyncio.Lock())
        started = time.monotonic()
        async with lock:
            current = self.view.credentials(account.id)
            if current is not None and current.generation != stale.generation:
                return current  # refreshed by someone else while we waited
            try:
                fresh = await asyncio.to_thread(rotate_tokens, self.view.secrets.path, account.id,
                                                stale_generation=stale.generation, token_url=self.config.token_url,
                                                db_path=self.view.db_path)
            except RefreshError as exc:
                # Routing never blocks an account (docs/BEHAVIOUR.md §9): the attempt fails and the account cools down.
                raise self._fail(run, account, FailureClass.AUTH_FAILED, str(exc), status=None,
                                 ms=_ms(started), refreshed=True) from None
            except Exception as exc:  # e.g. the secrets store is locked or unreadable
                log.exception("token refresh of %s failed unexpectedly", account.display)
                raise self._fail(run, account, FailureClass.AUTH_FAILED,
                                 f"token refresh failed: {type(exc).__name__}", status=None,
                                 ms=_ms(started), refreshed=True) from None
            self.view.remember_credentials(fresh)
            return fresh

    # ------------------------------------------------------------ health and metrics

    def _fail(self, run: Run, account: Account, cls: FailureClass, brief: str, *, status: int | None, ms: float,
              refreshed: bool = False, headers: Any = None, body: bytes | None = None) -> AttemptFailed:
        run.attempts.append({"request_id": run.admitted.request_id, "n": len(run.attempts) + 1,
                             "account_id": account.id, "status": status, "class": cls.value, "ms": ms,
                             "refreshed": int(refreshed), "started_at": time.time() - ms / 1000})
        until = self._cool_down(account, cls, headers or {}, body, brief, model=run.admitted.model)
        log.info("attempt on %s failed: %s (%s)", account.display, cls.value, brief)
        return AttemptFailed(cls, brief, until)

    def _cool_down(self, account: Account, cls: FailureClass, headers: Any, body: bytes | None, brief: str,
                   *, model: str | None = None) -> float | None:
        now = time.time()
        until = cooldown_until(cls, headers, body, settings=self.view.settings, now=now)
        h = self.view.health_of(account.id)
        update: dict[str, Any] = {"last_error": brief, "last_error_class": cls.value, "last_error_at": now}
        if until is not None:
            if cls is FailureClass.MODEL_RESTRICTED and model:
                update["model_cooldowns"] = {**h.model_cooldowns, model: until}
            else:
                # Escalation, the transient threshold and half-open state (routing/recovery.py).
                verdict = recovery.judge_failure(h, cls, until, settings=self.view.settings, now=now)
                update.update(verdict.changes)
                until = verdict.cooldown_until
                if until is not None and until > (h.cooldown_until or 0):
                    update.update(cooldown_until=until, cooldown_reason=brief, cooldown_class=cls.value)
        self._put_health(h.model_copy(update=update))
        return until

    def _note_error(self, account: Account, cls: FailureClass, brief: str) -> None:
        h = self.view.health_of(account.id)
        self._put_health(h.model_copy(update={"last_error": brief, "last_error_class": cls.value,
                                              "last_error_at": time.time()}))

    def _observe_usage(self, account: Account, headers: Mapping[str, str]) -> None:
        now = time.time()
        h = self.view.health_of(account.id)
        recent = now - (h.last_used_at or 0) < USAGE_REFRESH_S
        if recent and not carries_windows(headers):
            return  # `x-ratelimit-*` only, read less than a second ago (USAGE_REFRESH_S says why)
        obs = parse_usage_headers(headers, now)
        if recent and (obs is None or same_windows(obs, h)):
            return  # the windows' used % and length are as last seen; only their reset times moved with the clock
        update: dict[str, Any] = {"last_used_at": now}
        if obs is not None:
            if obs.primary is not None:
                update.update(primary=obs.primary, usage_seen_at=now)
            if obs.secondary is not None:
                update.update(secondary=obs.secondary, usage_seen_at=now)
            if obs.ratelimit is not None:
                update.update(ratelimit=obs.ratelimit, ratelimit_seen_at=now)
        self._put_health(h.model_copy(update=update))

    def _put_health(self, health: AccountHealth) -> None:
        self.view.update_health(health)
        self.writer.submit(HealthUpdate(health))

    def _attempt_row(self, run: Run, account: Account, status: int | None, cls: FailureClass, started: float,
                     refreshed: bool) -> None:
        run.attempts.append({"request_id": run.admitted.request_id, "n": len(run.attempts) + 1,
                             "account_id": account.id, "status": status, "class": cls.value, "ms": _ms(started),
                             "refreshed": int(refreshed), "started_at": time.time() - _ms(started) / 1000})

    def _phase(self, run: Run, phase: str, account_id: str | None) -> None:
        run.phase, run.phase_account_id = phase, account_id
        if run.published:
            self._submit_phase(run)

    def _submit_phase(self, run: Run) -> None:
        a = run.admitted
        self.writer.submit(InflightUpdate(a.request_id, {
            "request_id": a.request_id, "started_at": a.started_at, "updated_at": time.time(), "pid": _PID,
            "client_key_label": a.client_label, "method": a.method, "endpoint": a.endpoint, "model": a.model,
            "stream": int(a.stream), "account_id": run.phase_account_id, "attempts": len(run.attempts),
            "phase": run.phase}))

    def _record(self, run: Run) -> None:
        a = run.admitted
        end = time.monotonic()
        usage = run.usage or TokenUsage()
        self._running.pop(a.request_id, None)
        if run.published:
            self.writer.submit(InflightUpdate(a.request_id, None))
        self.writer.submit(RequestRecord(row={
            "id": a.request_id, "started_at": a.started_at, "finished_at": a.started_at + (end - a.t0),
            "client_key_label": a.client_label, "method": a.method, "endpoint": a.endpoint, "model": a.model,
            "stream": int(a.stream), "request_bytes": len(a.body), "account_id": run.account_id,
            "attempts": len(run.attempts), "status": run.status, "outcome": run.outcome.value,
            "failure_brief": run.brief if run.outcome is not FailureClass.OK else None,
            "total_ms": run.ms_since_start(end), "upstream_headers_ms": run.ms_since_start(run.headers_at),
            "first_chunk_ms": run.ms_since_start(run.first_chunk_at),
            "stream_ms": round((end - run.first_chunk_at) * 1000, 2) if run.first_chunk_at else None,
            "input_tokens": usage.input_tokens, "cached_input_tokens": usage.cached_input_tokens,
            "output_tokens": usage.output_tokens, "reasoning_tokens": usage.reasoning_tokens,
            "total_tokens": usage.total_tokens, "session_key": a.session_key,
            "queue_wait_ms": round(run.queue_wait_s * 1000, 2) if run.queue_wait_s else None,
        }, attempts=run.attempts))


_PID = os.getpid()


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)


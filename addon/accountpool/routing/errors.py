"""OpenAI-shaped error answers, including the aggregated "pool exhausted" one (docs/BEHAVIOUR.md §10).

Clients (SDKs, Codex CLI) parse `{"error": {"message", "type", "code"}}`; keeping our own
answers in that shape means they show the operator a useful message instead of a parse error.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from accountpool.human_time import duration
from accountpool.models import LIMIT_CLASSES, FailureClass, SkipReason


@dataclass(frozen=True)
class ErrorAnswer:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    outcome: FailureClass = FailureClass.INTERNAL_ERROR
    brief: str = ""


def openai_error(status: int, message: str, *, type: str, code: str | None,
                 outcome: FailureClass, headers: tuple[tuple[str, str], ...] = (), **extra: object) -> ErrorAnswer:
    payload = {"error": {"message": message, "type": type, "code": code, "param": None, **extra}}
    return ErrorAnswer(status, json.dumps(payload).encode(), (("content-type", "application/json"), *headers),
                       outcome, message[:300])


def client_auth_error(reason: str) -> ErrorAnswer:
    return openai_error(401, f"accountpool: {reason}. Send a client key created with "
                        "`accountpool client-key create` as `Authorization: Bearer <key>`.",
                        type="invalid_request_error", code="invalid_client_key",
                        outcome=FailureClass.CLIENT_AUTH_FAILED)


def bad_request(message: str, *, status: int = 400, code: str = "invalid_request") -> ErrorAnswer:
    return openai_error(status, f"accountpool: {message}", type="invalid_request_error", code=code,
                        outcome=FailureClass.BAD_CLIENT_REQUEST)


def internal_error(message: str) -> ErrorAnswer:
    return openai_error(500, f"accountpool: internal error ({message}); the request was not forwarded",
                        type="server_error", code="accountpool_internal_error",
                        outcome=FailureClass.INTERNAL_ERROR)


def proxy_overloaded(cause: str) -> ErrorAnswer:
    """This proxy could not open an upstream connection (its own limits, not an account's): try again shortly."""
    return openai_error(503, f"accountpool: this proxy cannot open an upstream connection right now ({cause}); "
                        "no account was tried. Its open streams hold the process's file descriptors (four each): "
                        "raise `ulimit -n` for mitmproxy, or spread the clients over more proxies.",
                        type="server_error", code="proxy_overloaded", outcome=FailureClass.PROXY_OVERLOADED,
                        headers=(("retry-after", "1"),))


@dataclass
class FailureLog:
    """What went wrong across the attempts of one client request, for the final answer."""

    failures: list[tuple[str, FailureClass, str, float | None]] = field(default_factory=list)
    """(account display name, class, brief, cooldown end) per failed attempt."""
    cooldown_ends: list[float] = field(default_factory=list)

    def add(self, account: str, cls: FailureClass, brief: str, cooldown_until: float | None) -> None:
        self.failures.append((account, cls, brief, cooldown_until))
        if cooldown_until:
            self.cooldown_ends.append(cooldown_until)


LIMIT_SKIPS = frozenset({"cooldown", "model_cooldown", "usage_exhausted"})
NEUTRAL_SKIPS = frozenset({"disabled", "endpoint", "not_pinned"})
"""Skips that say nothing about why the pool cannot answer now (they do not turn a 429 into a 503)."""
MAX_LISTED_ACCOUNTS = 8
"""A pool of fifty accounts gets a readable message: the first few states and a count of the rest."""


def _skip_class(skip: SkipReason, cooldown_classes: Mapping[str, str]) -> str:
    """The class the counts use: a cooling account counts as the failure that started its cooldown."""
    if skip.reason == "cooldown":
        return cooldown_classes.get(skip.account_id) or "cooling_down"
    return {"model_cooldown": "model_restricted", "usage_exhausted": "usage_exhausted"}.get(skip.reason, skip.reason)


def _back_in(until: float | None, now: float) -> str:
    return f", back in {duration(math.ceil(until - now))}" if until and until > now else ""


def skip_state(skip: SkipReason, cooldown_classes: Mapping[str, str], now: float) -> str:
    """One account's state in the pool's own words: never the upstream's old text, which was true when it was
    said ("try again in 40s") and is stale by now."""
    match skip.reason:
        case "cooldown":
            return f"{_skip_class(skip, cooldown_classes)}{_back_in(skip.until, now)}"
        case "model_cooldown":
            return f"model_restricted for {skip.detail}{_back_in(skip.until, now)}"
        case "usage_exhausted":
            resets = f", resets in {duration(math.ceil(skip.until - now))}" if skip.until and skip.until > now else ""
            return f"usage exhausted ({skip.detail}){resets}"
        case "auth_blocked":
            return "auth_blocked (re-authorize it: `accountpool refresh` or the dashboard)"
        case "endpoint":
            return "cannot serve this endpoint"
        case "not_pinned":
            return "not the pinned account"
    return skip.reason


def _account_states(log: FailureLog, skipped: list[SkipReason], classes: Mapping[str, str], now: float) -> str:
    entries = [f'"{account}" {cls.value}{_back_in(until, now)}' for account, cls, _brief, until in log.failures]
    entries += [f'"{s.label}" {skip_state(s, classes, now)}' for s in skipped if s.reason != "not_pinned"]
    if len(entries) > MAX_LISTED_ACCOUNTS:
        entries[MAX_LISTED_ACCOUNTS:] = [f"and {len(entries) - MAX_LISTED_ACCOUNTS} more"]
    return "; ".join(entries)


def pool_exhausted(log: FailureLog, skipped: list[SkipReason], *, now: float,
                   cooldown_classes: Mapping[str, str] | None = None) -> ErrorAnswer:
    """429 when only limits stand in the way, 503 when nothing could be tried, 502 when all tries failed.

    The message counts the classes, then lists each account's state with the time it has left, then quotes
    the upstream's own words for a failure of this request (the only upstream text that is current).
    `cooldown_classes` maps a cooling account to the failure class that started its cooldown: a cooldown
    after a 5xx or an auth failure is not a rate limit, so it does not earn a 429.
    """
    classes = cooldown_classes or {}

    def is_limit(skip: SkipReason) -> bool:
        if skip.reason == "cooldown":
            return classes.get(skip.account_id, FailureClass.RATE_LIMITED.value) in {c.value for c in LIMIT_CLASSES}
        return skip.reason in LIMIT_SKIPS

    limit_skips = [s for s in skipped if is_limit(s)]
    counts = Counter(cls.value for _, cls, _, _ in log.failures)
    counts.update(_skip_class(s, classes) for s in skipped)
    summary = ", ".join(f"{n} {name}" for name, n in counts.most_common()) or "no accounts in the pool"
    states = _account_states(log, skipped, classes, now)
    detail = f"({summary})" + (f": {states}" if states else "")
    if log.failures:
        account, _cls, brief, _until = log.failures[-1]
        detail += f'; e.g. "{account}": {brief}'
    only_limits = bool(log.failures or limit_skips) \
        and all(cls in LIMIT_CLASSES for _, cls, _, _ in log.failures) \
        and all(is_limit(s) or s.reason in NEUTRAL_SKIPS for s in skipped)
    ends = [t for t in log.cooldown_ends if t > now] + [s.until for s in limit_skips if s.until and s.until > now]
    if only_limits:
        retry_after = max(1, math.ceil(min(ends) - now)) if ends else 60
        return openai_error(429, f"accountpool: every account is rate or quota limited {detail}",
                            type="rate_limit_error", code="pool_rate_limited", outcome=FailureClass.POOL_EXHAUSTED,
                            headers=(("retry-after", str(retry_after)),))
    if not log.failures:
        waits = [s.until for s in skipped if s.until and s.until > now]
        headers = (("retry-after", str(max(1, math.ceil(min(waits) - now)))),) if waits else ()
        return openai_error(503, f"accountpool: no account can serve this request now {detail}",
                            type="server_error", code="pool_unavailable", outcome=FailureClass.POOL_EXHAUSTED,
                            headers=headers)
    return openai_error(502, f"accountpool: every attempt failed {detail}",
                        type="server_error", code="pool_attempts_failed", outcome=FailureClass.POOL_EXHAUSTED)

"""Classify one upstream attempt (docs/BEHAVIOUR.md §8), compute its cooldown, and write a safe error brief.

One place owns the failure signals: the relay, the stream watcher and the probe all call these
functions, so a status/body pair is judged the same way wherever it shows up. Bodies are read
only up to 64 KiB: an error body larger than that is not an error body we can learn more from.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import re
from collections.abc import Mapping
from typing import Any

from accountpool.models import AccountKind, FailureClass, PoolSettings
from accountpool.upstream.usage_headers import parse_duration_s, parse_usage_headers

BODY_SCAN_LIMIT = 64 * 1024
MAX_COOLDOWN_S = 7 * 86_400
"""No hint, however odd, parks an account for longer than a week."""
DEFAULT_COOLDOWN_SETTING = {
    FailureClass.RATE_LIMITED: "cooldown_rate_limited_s",
    FailureClass.QUOTA_EXCEEDED: "cooldown_quota_s",
    FailureClass.AUTH_EXPIRED: "cooldown_auth_s",  # reached only when the refresh itself failed
    FailureClass.AUTH_FAILED: "cooldown_auth_s",
    FailureClass.PERMISSION_DENIED: "cooldown_auth_s",
    FailureClass.UPSTREAM_ERROR: "cooldown_upstream_s",
    FailureClass.MODEL_RESTRICTED: "cooldown_model_s",  # the caller applies it to the model only
}
"""The `PoolSettings` field that gives each class's cooldown when upstream sends no hint."""

_AUTH = re.compile(
    r"token[ _]?(?:is |has )?expired|invalid[ _]token|jwt[ _]expired|login[ _]required"
    r"|token_invalidated|authentication token has been invalidated"
)
_QUOTA = re.compile(
    r"insufficient_quota|usage_limit_reached|exceeded your current quota"
    r"|usage limit has been reached|hit your usage limit"
)
NOT_THE_ACCOUNTS_FAULT_5XX = frozenset({501, 505})
"""Not implemented / HTTP version not supported: the request's method or framing, which every account would
refuse alike (a client's HEAD would otherwise cool the whole pool down, one account after another)."""
_RATE = re.compile(r"rate[ _-]?limit|too many requests")
_MODEL = re.compile(r"model_not_found|does not have access to model|do not have access to it")
_SIGNALS = ((_AUTH, FailureClass.AUTH_EXPIRED), (_QUOTA, FailureClass.QUOTA_EXCEEDED),
            (_RATE, FailureClass.RATE_LIMITED), (_MODEL, FailureClass.MODEL_RESTRICTED))
"""Checked in this order: auth first, quota before rate limit (OpenAI sends insufficient_quota with 429)."""
_INVALID = re.compile(r"invalid_request|context_length_exceeded|invalid_prompt|string_above_max_length")


def _body_text(body: bytes | str | None) -> str:
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body[:BODY_SCAN_LIMIT]).decode("utf-8", "replace")
    return body[:BODY_SCAN_LIMIT] if body else ""


def _json_body(text: str) -> Any:
    try:
        return json.loads(text) if text.lstrip().startswith(("{", "[")) else None
    except ValueError:
        return None


def _error_object(doc: Any) -> dict[str, Any]:
    """The dict that describes the error: `error` when it is an object, else the document itself."""
    if isinstance(doc, list) and doc:
        doc = doc[0]
    if not isinstance(doc, dict):
        return {}
    return next((v for k in ("error", "detail") if isinstance(v := doc.get(k), dict)), doc)


def _signal_text(body: bytes | str | None) -> tuple[str, dict[str, Any]]:
    """Lower-cased text to match signals against, and the parsed error object (if JSON).

    For JSON we only look at code/type/message fields, so echoed request content cannot
    masquerade as an error signal; other bodies are matched as plain text.
    """
    text = _body_text(body)
    doc = _json_body(text)
    if doc is None:
        return text.lower(), {}
    err = _error_object(doc)
    parts = [err.get(k) for k in ("code", "type", "message", "detail", "error_description")]
    if isinstance(doc, dict):
        parts += [doc.get("error"), doc.get("detail"), doc.get("error_description"), doc.get("code")]
    return " ".join(p for p in parts if isinstance(p, str)).lower(), err


def _match_signals(text: str) -> FailureClass | None:
    """Body wording → class (see `_SIGNALS` for the order)."""
    return next((cls for pattern, cls in _SIGNALS if pattern.search(text)), None)


def _auth_class(kind: AccountKind, after_refresh: bool) -> FailureClass:
    """Only a ChatGPT login can be refreshed, and only once per attempt chain."""
    refreshable = kind == AccountKind.CHATGPT and not after_refresh
    return FailureClass.AUTH_EXPIRED if refreshable else FailureClass.AUTH_FAILED


def classify_attempt(status: int | None, body: bytes | str | None, *, kind: AccountKind,
                     after_refresh: bool = False, connection_error: bool = False) -> FailureClass:
    """Judge one upstream attempt by the table in docs/BEHAVIOUR.md §8."""
    if connection_error or status is None:
        return FailureClass.UPSTREAM_ERROR
    if 200 <= status < 400:
        return FailureClass.OK
    signal = _match_signals(_signal_text(body)[0])
    if status == 401 or signal == FailureClass.AUTH_EXPIRED:
        return _auth_class(kind, after_refresh)
    if status == 402 or signal == FailureClass.QUOTA_EXCEEDED:
        return FailureClass.QUOTA_EXCEEDED
    if status == 429 or signal == FailureClass.RATE_LIMITED:
        return FailureClass.RATE_LIMITED
    if signal == FailureClass.MODEL_RESTRICTED:
        return FailureClass.MODEL_RESTRICTED
    if status == 403:
        return FailureClass.PERMISSION_DENIED
    if status in NOT_THE_ACCOUNTS_FAULT_5XX:
        return FailureClass.INVALID_REQUEST
    if status >= 500 or status == 408:
        return FailureClass.UPSTREAM_ERROR
    return FailureClass.INVALID_REQUEST


def classify_inband_event(event_type: str, data: dict, *, kind: AccountKind = AccountKind.CHATGPT,
                          after_refresh: bool = False) -> FailureClass | None:
    """Classify an `error` or `response.failed` event of a Responses stream; None for other events.

    Failures we do not recognise are `upstream_error`: the account's upstream broke mid-answer.
    """
    data = data if isinstance(data, dict) else {}
    if event_type == "response.failed":
        err = data["response"].get("error") if isinstance(data.get("response"), dict) else None
    elif event_type == "error":
        err = data["error"] if isinstance(data.get("error"), dict) else data
    else:
        return None
    err = err if isinstance(err, dict) else {}
    text = " ".join(v for k in ("code", "type", "message") if isinstance(v := err.get(k), str)).lower()
    signal = _match_signals(text)
    if signal == FailureClass.AUTH_EXPIRED:
        return _auth_class(kind, after_refresh)
    if signal is not None:
        return signal
    if _INVALID.search(text):
        return FailureClass.INVALID_REQUEST
    return FailureClass.UPSTREAM_ERROR


_RETRY_IN = re.compile(r"(?:try again|retry)\s+(?:in|after)\s+", re.I)
_RETRY_PART = re.compile(
    r"\s*(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hrs?|hours?)(?![a-z])", re.I)
_UNIT_S = {"ms": 1e-3, "mi": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _retry_in_body_s(text: str) -> float | None:
    """Seconds from wording like "Please try again in 20s" / "in 1.5s" / "in 250ms" / "in 6m0s"."""
    if (anchor := _RETRY_IN.search(text)) is None:
        return None
    pos, total, found = anchor.end(), 0.0, False
    while m := _RETRY_PART.match(text, pos):
        unit = m.group(2).lower()
        key = "ms" if unit == "ms" else ("mi" if unit.startswith("milli") else unit[0])
        total += float(m.group(1)) * _UNIT_S[key]
        pos, found = m.end(), True
    return total if found else None


def _retry_after_s(value: str | None, now: float) -> float | None:
    """`Retry-After` as delay seconds or an HTTP-date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):  # neither a number nor a date: no hint
        return None
    if when.tzinfo is None:  # "-0000" means UTC with unknown local zone
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - now)


def _ratelimit_reset_s(h: Mapping[str, str]) -> float | None:
    """Longest `x-ratelimit-reset-*` among the exhausted counters (or among all, if none is at 0)."""
    found: list[tuple[bool, float]] = []
    for what in ("requests", "tokens"):
        reset = parse_duration_s(h.get(f"x-ratelimit-reset-{what}"))
        if reset is not None:
            found.append((h.get(f"x-ratelimit-remaining-{what}", "").strip() == "0", reset))
    exhausted = [s for at_zero, s in found if at_zero]
    pool = exhausted or [s for _, s in found]
    return max(pool) if pool else None


def _rate_limit_until(h: Mapping[str, str], text: str, now: float) -> float | None:
    """First hint that is present: Retry-After, retry-after-ms, x-ratelimit-reset-*, body wording."""
    ms = parse_duration_s(h.get("retry-after-ms"))
    hints = (_retry_after_s(h.get("retry-after"), now), None if ms is None else ms / 1000,
             _ratelimit_reset_s(h), _retry_in_body_s(text))
    return next((now + d for d in hints if d is not None), None)


def _quota_until(h: Mapping[str, str], body: bytes | str | None, now: float) -> float | None:
    """Window reset from the body (`resets_at` / `resets_in_seconds`), else from exhausted windows."""
    _, err = _signal_text(body)
    at, after = err.get("resets_at"), err.get("resets_in_seconds")
    if isinstance(at, int | float) and not isinstance(at, bool) and at > now:
        return float(at)
    if isinstance(after, int | float) and not isinstance(after, bool) and after > 0:
        return now + float(after)
    obs = parse_usage_headers(h, now)
    if obs is None:
        return None
    resets = [w.reset_at for w in (obs.primary, obs.secondary)
              if w and w.used_percent is not None and w.used_percent >= 100 and (w.reset_at or 0) > now]
    return max(resets) if resets else None


def cooldown_until(cls: FailureClass, headers: Mapping[str, str], body: bytes | str | None, *,
                   settings: PoolSettings, now: float) -> float | None:
    """When the account (or, for `model_restricted`, the model on it) may be tried again.

    Upstream hints win over the settings' defaults. A quota reset that is already past is
    ignored (it contradicts the error); the result is never before `now` nor beyond 7 days.
    """
    setting = DEFAULT_COOLDOWN_SETTING.get(cls)
    if setting is None:
        return None
    h = {str(k).lower(): v for k, v in headers.items()}
    hint = None
    if cls == FailureClass.RATE_LIMITED:
        hint = _rate_limit_until(h, _body_text(body), now)
    elif cls == FailureClass.QUOTA_EXCEEDED:
        hint = _quota_until(h, body, now)
    until = hint if hint is not None else now + getattr(settings, setting)
    return min(max(until, now), now + MAX_COOLDOWN_S)


_SECRET = re.compile(
    r"(?P<bearer>\b[Bb]earer\s+)(?P<bval>[^\s\"',;]{12,})"
    r"|(?<![\w-])(?P<jwt>eyJ[\w-]+(?:\.[\w-]+){1,2})"
    r"|(?<![\w-])(?P<sk>sk-[\w-]{8,})"
    r"|(?P<run>[A-Za-z0-9+/_=-]{24,})"
)
_HEX = re.compile(r"[0-9a-fA-F]{24,}")
_TAG = re.compile(r"<(?:script|style)\b.*?</(?:script|style)>|<[^>]*>", re.S | re.I)


def _mask(secret: str) -> str:
    return "…" + secret[-4:]


def _scrub_match(m: re.Match[str]) -> str:
    if m.group("bearer"):
        return m.group("bearer") + _mask(m.group("bval"))
    if m.group("jwt") or m.group("sk"):
        return _mask(m.group(0))
    run = m.group("run")
    # Mixed case plus digits over 24+ characters is a key or token, not a word or a model name.
    if any(c.isdigit() for c in run) and any(c.isupper() for c in run) and any(c.islower() for c in run):
        return _mask(run)
    return _HEX.sub(lambda h: _mask(h.group(0)), run)


def scrub_secrets(text: str) -> str:
    """Replace anything that looks like a credential with "…" and its last four characters.

    Covers `sk-…` keys, JWTs, `Bearer` values, and long hex or mixed-case base64 runs. Logs,
    metrics rows and error messages all pass through here (docs/BEHAVIOUR.md §15).
    """
    return _SECRET.sub(_scrub_match, text)


def _brief_source(body: bytes | str | None) -> str:
    text = _body_text(body)
    doc = _json_body(text)
    if doc is None:  # plain text, or an HTML error page: keep the words
        return _TAG.sub(" ", text) if text.lstrip().startswith("<") else text
    err = _error_object(doc)
    for source in (err, doc if isinstance(doc, dict) else {}):
        for key in ("message", "error", "detail", "error_description"):
            value = source.get(key)
            if isinstance(value, str) and value.strip():
                return value
    code = err.get("code") or err.get("type")
    return code if isinstance(code, str) else ""


def error_brief(status: int | None, body: bytes | str | None, limit: int = 160) -> str:
    """A one-line, secret-free, truncated human message for logs, metrics and pool errors."""
    # Scrub before truncating, on a bounded prefix: a cut secret must still be recognised.
    text = scrub_secrets(" ".join(_brief_source(body).split())[: limit * 4 + 64])
    if not text:
        text = f"HTTP {status}" if status is not None else "no response"
    if len(text) > limit:
        text = text[: max(limit - 1, 0)].rstrip() + "…"
    return text

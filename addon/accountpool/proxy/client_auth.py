"""Where a client's key comes from, and the throttle on wrong keys. Pure, no I/O.

The throttle exists to keep a misconfigured client from flooding the logs and the metrics with
401s and to tell it clearly what is wrong; it is not what protects the keys. A client key holds
256 random bits (`store.create_client_key`), so guessing one is hopeless at any request rate.
That is why a correct key is **always** accepted, even from an address that is being
throttled: on loopback every local client shares 127.0.0.1, and one script with a stale key
must not lock out everyone else (an earlier design did exactly that).

Failures are counted per presented key (its fingerprint: the same wrong key from many places)
and per source address (many different wrong or missing keys from one place). Only requests
without a valid key are ever refused by it.
"""

from __future__ import annotations

import base64
import hashlib
from collections import deque
from dataclasses import dataclass

FAILED_AUTH_WINDOW_S = 60.0
FAILED_AUTH_LIMIT = 10
_MAX_TRACKED = 10_000


def bearer_value(value: str) -> str:
    value = value.strip()
    return value[7:].strip() if value[:7].lower() == "bearer " else value


def proxy_auth_key(value: str | None) -> str | None:
    """The client key from `Proxy-Authorization: Basic base64(user:KEY)` (regular mode, e.g. Codex)."""
    if not value or value[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(value[6:].strip()).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[1] if ":" in decoded else decoded


def key_fingerprint(key: str) -> str:
    """Identifies a presented key in memory without keeping the key itself."""
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:32]


@dataclass(frozen=True)
class Throttled:
    """Why a request without a valid key is refused with 429, in words the client can act on."""

    message: str
    retry_after_s: int


class FailedAuthThrottle:
    """Sliding-window counts of failed client-key attempts, per key fingerprint and per source address."""

    def __init__(self, limit: int = FAILED_AUTH_LIMIT, window_s: float = FAILED_AUTH_WINDOW_S) -> None:
        self.limit, self.window_s = limit, window_s
        self._by_key: dict[str, deque[float]] = {}
        self._by_source: dict[str, deque[float]] = {}

    def check(self, fingerprint: str | None, source: str, now: float) -> Throttled | None:
        """For a request whose key did not match: whether to answer 429 instead of 401."""
        if fingerprint is not None and (q := self._recent(self._by_key, fingerprint, now)):
            return Throttled(
                f"this client key was refused {len(q)} times in the last {self.window_s:g} s (it is unknown or "
                "revoked), so further requests with it are throttled; requests with a valid client key are not "
                "affected", self._retry_after(q, now))
        if q := self._recent(self._by_source, source, now):
            return Throttled(
                f"{len(q)} requests with a missing or unknown client key came from {source} in the last "
                f"{self.window_s:g} s, so further requests from there without a valid key are throttled; requests "
                "with a valid client key are not affected", self._retry_after(q, now))
        return None

    def failed(self, fingerprint: str | None, source: str, now: float) -> None:
        if fingerprint is not None:
            self._add(self._by_key, fingerprint, now)
        self._add(self._by_source, source, now)

    def _recent(self, counts: dict[str, deque[float]], name: str, now: float) -> deque[float] | None:
        """The failures still inside the window when they reach the limit, else None."""
        q = counts.get(name)
        if q is None:
            return None
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del counts[name]
            return None
        return q if len(q) >= self.limit else None

    def _retry_after(self, q: deque[float], now: float) -> int:
        """Seconds until enough failures leave the window for the next attempt to count again."""
        return max(1, int(q[len(q) - self.limit] + self.window_s - now + 0.999))

    @staticmethod
    def _add(counts: dict[str, deque[float]], name: str, now: float) -> None:
        counts.setdefault(name, deque()).append(now)
        if len(counts) > _MAX_TRACKED:
            counts.pop(next(iter(counts)))

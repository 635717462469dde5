"""Waiting instead of failing: a bounded FIFO of requests that no account can serve *yet* (issue 13 §2).

When every account is cooling down (or its usage window is exhausted) until a known time, a client is better
served by a short wait than by a 429 it must retry itself: the request waits, at most `pool_max_wait`
seconds, and is admitted the moment a cooldown ends or a half-open trial succeeds.

- `refusal` is the pure decision: wait, or answer the aggregated error at once. Only limits that end at a
  known time qualify (`earliest_available`): a rate-limit or quota cooldown, an exhausted usage window, a
  half-open trial after one of those. A disabled, auth-blocked or wrong-endpoint account is no reason to
  wait, and neither is a cooldown after an auth failure, an upstream error or a missing model: its end is our
  guess, not the upstream's word, and waiting for it would only delay the error the client gets anyway.
- `AdmissionQueue` holds the waiters in arrival order. On one timer (the earliest time a waiter asked for)
  or when told (`notify`: a trial ended) it hands them the *turn*, one at a time in that order: only the
  waiter holding it re-runs the selection, and passes it on when it has an account (`leave`) or has found
  none and waits again (`done_turn`). Waking them all at once let whichever task the loop resumed first
  take a half-open trial, so a later arrival often beat an earlier one.
- The bound (`pool_max_waiting`) keeps memory and wake-up work flat when the pool is down for good; beyond
  it the client gets the error at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable, Mapping

from accountpool.models import LIMIT_CLASSES, SkipReason

_LIMIT_VALUES = frozenset(c.value for c in LIMIT_CLASSES)
POLL_S = 0.25
"""How often a waiter checks that its client is still there (and, for another process's trial, the pool)."""


def is_waitable(skip: SkipReason, cooldown_classes: Mapping[str, str]) -> bool:
    """A limit with a known end: a usage window, or a cooldown started by a rate limit or quota error (a cooldown
    of unknown cause counts as a limit, as in the pool's 429/503 choice)."""
    if skip.reason == "usage_exhausted":
        return True
    return skip.reason == "cooldown" and (cooldown_classes.get(skip.account_id) or "rate_limited") in _LIMIT_VALUES


def earliest_available(skipped: Iterable[SkipReason], now: float,
                       cooldown_classes: Mapping[str, str] | None = None) -> float | None:
    """The earliest time (Unix seconds) one of the skipped accounts is back from a limit, or None if none will be.

    `cooldown_classes`: account id → the failure class that started its cooldown."""
    classes = cooldown_classes or {}
    ends = [s.until for s in skipped
            if s.until is not None and s.until > now and is_waitable(s, classes)]
    return min(ends) if ends else None


def refusal(earliest: float | None, *, now: float, wait_left_s: float, waiting: int, max_waiting: int,
            queued: bool = False) -> str | None:
    """Why this request must not wait (the client gets the pool error at once), or None to wait.

    `wait_left_s`: what is left of the request's `pool_max_wait` (0 turns waiting off); `queued`: the request
    already holds a place, so the bound does not apply to it again."""
    if wait_left_s <= 0:
        return "no wait allowed (pool_max_wait is 0 or used up)"
    if earliest is None:
        return "no account becomes available at a known time"
    if earliest - now > wait_left_s:
        return f"the earliest account is back in {earliest - now:.0f} s, beyond the wait limit"
    if not queued and waiting >= max_waiting:
        return f"{waiting} requests are already waiting (pool_max_waiting)"
    return None


class Waiter:
    """One request's place in the queue."""

    __slots__ = ("_turn", "entered", "queue")

    def __init__(self, queue: AdmissionQueue) -> None:
        self.queue = queue
        self.entered = time.monotonic()
        self._turn = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        """Sleep until given the turn (True) or `timeout` seconds passed (False)."""
        if not self._turn.is_set():
            try:
                await asyncio.wait_for(self._turn.wait(), max(0.0, timeout))
            except TimeoutError:
                return False
        self._turn.clear()
        return True

    def leave(self) -> None:
        self.queue.leave(self)


class AdmissionQueue:
    """Waiting requests in arrival order (per process); they re-check the pool one at a time, in that order."""

    def __init__(self) -> None:
        self._waiters: deque[Waiter] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._turn: Waiter | None = None
        """The waiter re-running its selection now; None between passes."""
        self._again = False
        """Something happened during a pass: run another one from the head when it ends."""

    def __len__(self) -> int:
        return len(self._waiters)

    def enter(self) -> Waiter:
        waiter = Waiter(self)
        self._waiters.append(waiter)
        return waiter

    def leave(self, waiter: Waiter) -> None:
        """The waiter has its account, gave up or lost its client; a turn it held goes to the next in line."""
        try:
            index = self._waiters.index(waiter)
        except ValueError:
            return
        del self._waiters[index]
        if self._turn is waiter:
            self._give_turn(index)
        if not self._waiters and self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, float("inf")

    def done_turn(self, waiter: Waiter) -> None:
        """The waiter found nothing and keeps its place: the next in line re-checks."""
        if self._turn is waiter:
            self._give_turn(self._waiters.index(waiter) + 1)

    def wake_at(self, monotonic_at: float) -> None:
        """Start a pass at `monotonic_at` (one timer: the earliest asked for wins)."""
        if monotonic_at >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = monotonic_at
        # The loop's clock is time.monotonic() on every platform asyncio supports.
        self._timer = loop.call_at(loop.time() + (monotonic_at - time.monotonic()), self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        self.notify()

    def notify(self) -> None:
        """Something may have become available: a pass over the waiters, the earliest arrival first."""
        if self._turn is not None:
            self._again = True
        else:
            self._give_turn(0)

    def _give_turn(self, index: int) -> None:
        if index < len(self._waiters):
            self._turn = self._waiters[index]
            self._turn._turn.set()
            return
        self._turn = None
        if self._again and self._waiters:
            self._again = False
            self._give_turn(0)

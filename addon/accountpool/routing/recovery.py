"""How an account comes back from a failure: escalating cooldowns, a transient-error threshold, half-open.

Pure: the router passes an account's health, the failure class, the cooldown `classify` computed
(upstream hint or the class's default) and the clock, and gets back the cooldown to apply and the
health fields to change. Nothing here does I/O; the trial claim that makes "half-open" one request
across processes lives in `accountpool.storage.trial_claims`.

The state machine (also in the README, "When every account is busy"):

- **healthy** → a failure of a cooling class opens a cooldown (`recovering` set). `upstream_error`
  (5xx, 408, connection failures) opens one only at the `transient_threshold`-th failure within any
  `transient_window_s` (a sliding window over the recent error times): one isolated 500 or reset is
  noise, and cooling a whole account for it would take capacity away for 30 s to save one failover.
  Rate limits do not get a threshold: a 429 is the upstream telling us to back off (with a time,
  usually), and ignoring it earns more 429s.
- **cooling** until `cooldown_until`; failures that arrive meanwhile (requests that were already on
  their way) record the error but do not escalate: they say nothing new about the account.
- **half-open** once the cooldown ended while `recovering` is set: exactly one request (the trial)
  goes to it. Success → healthy, streak reset. Failure → cooling again, longer.
- **Escalation**: each consecutive failure of the same class while not cooling multiplies the
  cooldown by `cooldown_escalation_factor` (capped at `cooldown_max_s`) for `rate_limited` and
  `upstream_error`. The first failure's cooldown is exactly today's (hint or default). An upstream
  hint (Retry-After, reset headers) is a floor: escalation may lengthen it, never shorten it, and the
  cap never cuts below the un-escalated cooldown. Quota and auth classes keep their own rules (a
  quota window resets when it resets; escalating that would only park a recovered account).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from accountpool.models import AccountHealth, FailureClass, PoolSettings

ESCALATING = frozenset({FailureClass.RATE_LIMITED, FailureClass.UPSTREAM_ERROR})
"""Classes whose repeated failures lengthen the cooldown (issue 13: rate_limited / server_error / send_failed;
here 5xx and send failures are both `upstream_error`)."""
THRESHOLDED = frozenset({FailureClass.UPSTREAM_ERROR})
"""Classes that cool an account down only after `transient_threshold` failures within the window."""


class RecoveryState(StrEnum):
    HEALTHY = "healthy"
    COOLING = "cooling"
    HALF_OPEN = "half-open"
    TRIAL = "trial in flight"


@dataclass(frozen=True)
class FailureVerdict:
    """What one failed attempt does to its account."""

    cooldown_until: float | None
    """When the account may be tried again; None: no cooldown (under the transient threshold, or a class
    without account cooldowns)."""
    changes: dict[str, Any] = field(default_factory=dict)
    """AccountHealth fields to update (streak, transient window, `recovering`, `recovery_at`)."""


def is_cooling(health: AccountHealth, now: float) -> bool:
    return health.cooldown_until is not None and health.cooldown_until > now


def needs_trial(health: AccountHealth, now: float) -> bool:
    """Half-open: its cooldown is over but no request has shown it works again yet."""
    return health.recovering and not is_cooling(health, now)


def state_of(health: AccountHealth | None, now: float) -> RecoveryState:
    """The state the dashboard shows (a trial counts as in flight while its lease is live)."""
    if health is None:
        return RecoveryState.HEALTHY
    if is_cooling(health, now):
        return RecoveryState.COOLING
    if health.recovering:
        return RecoveryState.TRIAL if (health.trial_until or 0) > now else RecoveryState.HALF_OPEN
    return RecoveryState.HEALTHY


def escalated_duration(base_s: float, streak: int, settings: PoolSettings) -> float:
    """`base_s` × factor^streak, capped at `cooldown_max_s` but never below `base_s` itself."""
    if streak <= 0:
        return base_s
    grown = base_s * settings.cooldown_escalation_factor ** min(streak, 64)
    return max(base_s, min(grown, settings.cooldown_max_s))


def recent_transients(times: list[float], now: float, settings: PoolSettings) -> list[float]:
    """The error times inside the sliding window that ends now, this error (at `now`) included.

    Only the newest `transient_threshold` are kept: older ones cannot change the verdict, and the list is
    stored in `pool.db` with the account's health."""
    recent = [t for t in times if now - t <= settings.transient_window_s]
    recent.append(now)
    return recent[-settings.transient_threshold:]


def judge_failure(health: AccountHealth, cls: FailureClass, base_until: float | None, *,
                  settings: PoolSettings, now: float) -> FailureVerdict:
    """The cooldown a failed attempt earns, given what the account went through before.

    `base_until` is `classify.cooldown_until` (the upstream's hint, else the class's default); None for
    classes that never cool an account down. Model-restricted cooldowns are per model and not judged here.
    """
    if base_until is None:
        return FailureVerdict(None)
    if is_cooling(health, now):
        # Already cooling (an attempt that started before the cooldown): keep the streak as it is.
        return FailureVerdict(base_until)
    changes: dict[str, Any] = {"recovery_at": now}
    if cls in THRESHOLDED and not health.recovering:
        recent = recent_transients(health.transient_times, now, settings)
        if len(recent) < settings.transient_threshold:
            changes.update(transient_times=recent)
            return FailureVerdict(None, changes)
    # A cooldown opens (or re-opens, for a failed trial): the transient window starts over.
    changes.update(transient_times=[], recovering=True)
    streak = health.failure_streak if health.streak_class == cls.value else 0
    changes.update(failure_streak=streak + 1, streak_class=cls.value)
    if cls not in ESCALATING:
        return FailureVerdict(base_until, changes)
    base_s = max(0.0, base_until - now)
    until = max(base_until, now + escalated_duration(base_s, streak, settings))
    return FailureVerdict(until, changes)


def judge_success(health: AccountHealth, now: float) -> dict[str, Any] | None:
    """Fields to reset after a successful attempt, or None when there is nothing to reset (the common case,
    so the hot path writes nothing)."""
    if not health.recovering and not health.failure_streak:
        return None
    return {"recovering": False, "failure_streak": 0, "streak_class": None, "recovery_at": now}

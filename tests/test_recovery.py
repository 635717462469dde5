"""`recovery.py`: escalation, the transient threshold and half-open state, as tables of cases (pure)."""

from __future__ import annotations

import pytest
from accountpool.models import AccountHealth, FailureClass, PoolSettings, merge_health
from accountpool.routing.recovery import (
    RecoveryState,
    escalated_duration,
    judge_failure,
    judge_success,
    needs_trial,
    state_of,
)

NOW = 1_000_000.0
S = PoolSettings()  # factor 2, cap 1800 s, threshold 3 in 60 s
RL, UP, QUOTA, AUTH = (FailureClass.RATE_LIMITED, FailureClass.UPSTREAM_ERROR, FailureClass.QUOTA_EXCEEDED,
                       FailureClass.AUTH_FAILED)


def health(**fields) -> AccountHealth:
    return AccountHealth(account_id="a", **fields)


@pytest.mark.parametrize(("before", "cls", "base_s", "until_s", "streak"), [
    # first failure: exactly today's cooldown (hint or default)
    ({}, RL, 60, 60, 1),
    ({}, RL, 5, 5, 1),
    # a failed trial after one rate limit: ×2; after two: ×4
    ({"recovering": True, "failure_streak": 1, "streak_class": "rate_limited"}, RL, 60, 120, 2),
    ({"recovering": True, "failure_streak": 2, "streak_class": "rate_limited"}, RL, 60, 240, 3),
    # capped at cooldown_max_s (1800) …
    ({"recovering": True, "failure_streak": 10, "streak_class": "rate_limited"}, RL, 60, 1800, 11),
    # … but the cap never shortens what the upstream asked for (Retry-After is a floor)
    ({"recovering": True, "failure_streak": 10, "streak_class": "rate_limited"}, RL, 3600, 3600, 11),
    # a different class starts a new streak
    ({"recovering": True, "failure_streak": 3, "streak_class": "upstream_error"}, RL, 60, 60, 1),
    # quota and auth keep their own rules: no escalation, streak still counted for the dashboard
    ({"recovering": True, "failure_streak": 2, "streak_class": "quota_exceeded"}, QUOTA, 3600, 3600, 3),
    ({"recovering": True, "failure_streak": 2, "streak_class": "auth_failed"}, AUTH, 300, 300, 3),
    # a failed trial after server errors: no threshold while recovering, and ×2
    ({"recovering": True, "failure_streak": 1, "streak_class": "upstream_error"}, UP, 30, 60, 2),
])
def test_cooldowns_escalate_per_class(before, cls, base_s, until_s, streak):
    verdict = judge_failure(health(**before), cls, NOW + base_s, settings=S, now=NOW)
    assert verdict.cooldown_until == pytest.approx(NOW + until_s)
    assert verdict.changes["failure_streak"] == streak
    assert verdict.changes["recovering"] is True and verdict.changes["recovery_at"] == NOW


def test_failures_while_already_cooling_do_not_escalate():
    # Requests that were on their way when the first 429 arrived: one burst is one failure, not twenty.
    h = health(cooldown_until=NOW + 30, recovering=True, failure_streak=1, streak_class="rate_limited")
    verdict = judge_failure(h, RL, NOW + 60, settings=S, now=NOW)
    assert verdict.cooldown_until == NOW + 60 and verdict.changes == {}


@pytest.mark.parametrize(("before", "cools", "kept"), [
    ([], False, [NOW]),                                   # one isolated 500: no cooldown
    ([NOW - 10], False, [NOW - 10, NOW]),
    ([NOW - 20, NOW - 10], True, []),                     # the third within 60 s cools it
    ([NOW - 61, NOW - 10], False, [NOW - 10, NOW]),       # the oldest left the window
    ([NOW - 60, NOW - 10], True, []),                     # exactly 60 s ago is still inside
    # The window slides: errors at 0, 55, 62 and 64 s. At 62 s the first has left, 55 and 62 remain; the
    # error at 64 s is the third within 9 s and cools the account (a fixed window from 0 s never did).
    ([NOW - 64, NOW - 9], False, [NOW - 9, NOW]),         # the error at 62 s (NOW = 62 + 2 s)
    ([NOW - 9, NOW - 2], True, []),                       # the error at 64 s
    ([NOW - 50, NOW - 40, NOW - 30, NOW - 20], True, []),  # more stored than the threshold (a lower setting)
])
def test_server_errors_cool_down_only_past_the_sliding_threshold(before, cools, kept):
    verdict = judge_failure(health(transient_times=before), UP, NOW + 30, settings=S, now=NOW)
    assert (verdict.cooldown_until is not None) is cools
    assert verdict.changes["transient_times"] == kept
    assert verdict.changes.get("recovering", False) is cools


def test_the_window_slides_over_a_sequence():
    """Errors at 0, 55, 62, 64 s, each judged on what the previous ones left (as the router does)."""
    h = health()
    cooled_at = None
    for t in (0, 55, 62, 64):
        verdict = judge_failure(h, UP, NOW + t + 30, settings=S, now=NOW + t)
        h = h.model_copy(update=verdict.changes)
        if verdict.cooldown_until is not None:
            cooled_at = t
            break
    assert cooled_at == 64


def test_transient_times_are_stored_as_json_and_read_back():
    h = health(transient_times=f"[{NOW - 5}, {NOW}]")
    assert h.transient_times == [NOW - 5, NOW] and h.transient_count == 2


def test_rate_limits_have_no_threshold():
    assert judge_failure(health(), RL, NOW + 60, settings=S, now=NOW).cooldown_until == NOW + 60


def test_a_threshold_of_one_cools_on_the_first_error():
    one = S.model_copy(update={"transient_threshold": 1})
    assert judge_failure(health(), UP, NOW + 30, settings=one, now=NOW).cooldown_until == NOW + 30


def test_classes_without_a_cooldown_change_nothing():
    assert judge_failure(health(), FailureClass.INVALID_REQUEST, None, settings=S, now=NOW).changes == {}


@pytest.mark.parametrize(("base", "streak", "factor", "cap", "expected"), [
    (60, 0, 2, 1800, 60), (60, 1, 2, 1800, 120), (60, 5, 2, 1800, 1800), (60, 3, 1, 1800, 60),
    (60, 2, 3, 1800, 540), (100, 4, 2, 50, 100),  # a cap below the base does not cut the base
])
def test_escalated_duration(base, streak, factor, cap, expected):
    settings = S.model_copy(update={"cooldown_escalation_factor": factor, "cooldown_max_s": cap})
    assert escalated_duration(base, streak, settings) == expected


def test_a_success_resets_the_streak_and_closes_half_open():
    assert judge_success(health(), NOW) is None  # the hot path writes nothing for a healthy account
    changes = judge_success(health(recovering=True, failure_streak=3, streak_class="rate_limited"), NOW)
    assert changes == {"recovering": False, "failure_streak": 0, "streak_class": None, "recovery_at": NOW}


@pytest.mark.parametrize(("fields", "state"), [
    ({}, RecoveryState.HEALTHY),
    ({"cooldown_until": NOW + 5, "recovering": True}, RecoveryState.COOLING),
    ({"cooldown_until": NOW - 5, "recovering": True}, RecoveryState.HALF_OPEN),
    ({"cooldown_until": NOW - 5, "recovering": True, "trial_until": NOW + 20}, RecoveryState.TRIAL),
    ({"cooldown_until": NOW - 5, "recovering": True, "trial_until": NOW - 1}, RecoveryState.HALF_OPEN),
    ({"cooldown_until": NOW - 5}, RecoveryState.HEALTHY),  # a cooldown stored before recovery existed
])
def test_state_of(fields, state):
    assert state_of(health(**fields), NOW) is state
    assert needs_trial(health(**fields), NOW) is (state in (RecoveryState.HALF_OPEN, RecoveryState.TRIAL))


def test_merge_keeps_the_newer_recovery_observation():
    failed_again = health(recovering=True, failure_streak=2, streak_class="rate_limited", recovery_at=NOW)
    recovered = health(recovering=False, failure_streak=0, recovery_at=NOW + 1, trial_until=NOW + 30)
    merged = merge_health(failed_again, recovered)
    assert (merged.recovering, merged.failure_streak, merged.trial_until) == (False, 0, NOW + 30)
    merged = merge_health(recovered, failed_again)
    assert (merged.recovering, merged.failure_streak) == (False, 0)
    assert merge_health(failed_again, health(recovery_at=NOW - 1)).failure_streak == 2

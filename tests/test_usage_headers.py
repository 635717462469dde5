import pytest
from accountpool.models import RateLimitObservation, UsageWindow
from accountpool.upstream.usage_headers import parse_duration_s, parse_usage_headers, usage_from_wham

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("1.5", 1.5),
        ("  17ms ", 0.017),
        ("500us", 0.0005),
        ("2h", 7200.0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "1x", "s", "-1s", "-3", "1s junk", "nan", "inf", "1h 2m"])
def test_parse_duration_rejects(text):
    assert parse_duration_s(text) is None


def test_no_relevant_headers_is_none():
    assert parse_usage_headers({"content-type": "application/json"}, NOW) is None
    assert parse_usage_headers({}, NOW) is None


def test_all_malformed_is_none():
    assert parse_usage_headers({"x-codex-primary-used-percent": "lots"}, NOW) is None


def test_codex_windows_case_insensitive_names():
    obs = parse_usage_headers(
        {
            "X-Codex-Primary-Used-Percent": "42.5",
            "x-codex-primary-window-minutes": "300",
            "x-codex-primary-reset-after-seconds": "600",
            "x-codex-secondary-used-percent": "12",
            "x-codex-secondary-window-minutes": "10080",
            "x-codex-secondary-reset-at": "1700100000",
        },
        NOW,
    )
    assert obs is not None
    assert obs.seen_at == NOW
    assert obs.primary == UsageWindow(used_percent=42.5, window_minutes=300, reset_at=NOW + 600)
    assert obs.secondary == UsageWindow(used_percent=12, window_minutes=10080, reset_at=1_700_100_000)
    assert obs.ratelimit is None


def test_explicit_reset_at_wins_over_after():
    obs = parse_usage_headers(
        {"x-codex-primary-reset-at": "1700000500", "x-codex-primary-reset-after-seconds": "9"}, NOW
    )
    assert obs is not None and obs.primary is not None
    assert obs.primary.reset_at == 1_700_000_500


def test_malformed_fields_dropped_one_by_one():
    obs = parse_usage_headers(
        {
            "x-codex-primary-used-percent": "abc",
            "x-codex-primary-window-minutes": "300",
            "x-codex-primary-reset-after-seconds": "-5",
            "x-codex-secondary-used-percent": "NaN",
        },
        NOW,
    )
    assert obs is not None
    assert obs.primary == UsageWindow(window_minutes=300)
    assert obs.secondary is None


def test_ratelimit_headers():
    obs = parse_usage_headers(
        {
            "x-ratelimit-limit-requests": "10000",
            "x-ratelimit-remaining-requests": "9999",
            "x-ratelimit-reset-requests": "6ms",
            "x-ratelimit-limit-tokens": "2000000",
            "x-ratelimit-remaining-tokens": "oops",
            "x-ratelimit-reset-tokens": "1m30s",
        },
        NOW,
    )
    assert obs is not None
    assert obs.primary is None and obs.secondary is None
    assert obs.ratelimit is not None
    assert obs.ratelimit.reset_requests_s == pytest.approx(0.006)
    assert obs.ratelimit.model_copy(update={"reset_requests_s": None}) == RateLimitObservation(
        limit_requests=10000,
        remaining_requests=9999,
        limit_tokens=2_000_000,
        remaining_tokens=None,
        reset_tokens_s=90.0,
    )


class CaseInsensitive(dict):
    """Mapping like mitmproxy's Headers: keys keep their original case."""


def test_accepts_any_mapping():
    obs = parse_usage_headers(CaseInsensitive({"X-RateLimit-Remaining-Requests": "3"}), NOW)
    assert obs is not None and obs.ratelimit is not None
    assert obs.ratelimit.remaining_requests == 3


def test_usage_from_wham():
    body = {
        "plan_type": "plus",
        "rate_limit": {
            "allowed": True,
            "limit_reached": False,
            "primary_window": {"used_percent": 7, "limit_window_seconds": 18000, "reset_after_seconds": 100},
            "secondary_window": {
                "used_percent": 55.5,
                "limit_window_seconds": 604800,
                "reset_at": 1_700_500_000,
            },
        },
    }
    obs = usage_from_wham(body, NOW)
    assert obs.primary == UsageWindow(used_percent=7, window_minutes=300, reset_at=NOW + 100)
    assert obs.secondary == UsageWindow(used_percent=55.5, window_minutes=10080, reset_at=1_700_500_000)
    assert obs.seen_at == NOW


@pytest.mark.parametrize("body", [{}, {"rate_limit": None}, {"rate_limit": {"primary_window": "x"}}, []])
def test_usage_from_wham_tolerates_missing(body):
    obs = usage_from_wham(body, NOW)
    assert obs.primary is None and obs.secondary is None


def test_carries_windows_looks_for_codex_windows_only():
    from accountpool.upstream.usage_headers import carries_windows
    from multidict import CIMultiDict

    assert carries_windows(CIMultiDict({"X-Codex-Primary-Used-Percent": "12"}))
    assert carries_windows(CIMultiDict({"x-codex-secondary-window-minutes": "10080"}))
    assert not carries_windows(CIMultiDict({"x-ratelimit-remaining-requests": "4999", "content-type": "x"}))


def test_same_windows_ignores_reset_times_and_missing_windows():
    from accountpool.models import AccountHealth
    from accountpool.upstream.usage_headers import same_windows

    health = AccountHealth(account_id="a", primary=UsageWindow(used_percent=40.0, window_minutes=300, reset_at=1.0),
                           secondary=UsageWindow(used_percent=5.0, window_minutes=10_080, reset_at=2.0))
    moved = parse_usage_headers({"x-codex-primary-used-percent": "40", "x-codex-primary-window-minutes": "300",
                                 "x-codex-primary-reset-after-seconds": "100"}, now=1000.0)
    assert same_windows(moved, health)  # only the reset time moved (and no weekly window in this answer)
    risen = parse_usage_headers({"x-codex-primary-used-percent": "41", "x-codex-primary-window-minutes": "300"}, 0.0)
    assert not same_windows(risen, health)
    weekly = parse_usage_headers({"x-codex-secondary-used-percent": "5", "x-codex-secondary-window-minutes": "300"},
                                 0.0)
    assert not same_windows(weekly, health)  # same used %, another window length

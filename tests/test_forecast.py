"""`forecast.py` on its own: burn rate, exhaustion time, resets, and a recorded header sequence."""

from __future__ import annotations

import pytest
from accountpool.forecast import (
    Sample,
    current_window,
    describe,
    forecast_window,
    latest_forecast,
    redistribution_factors,
    scaled,
)
from accountpool.models import AccountHealth, UsageWindow
from accountpool.upstream.usage_headers import parse_usage_headers

NOW = 1_700_000_000.0
H = 3600.0
WEEK_MIN = 10_080


def s(ago: float, used: float | None, reset_in: float | None = None, minutes: int | None = None) -> Sample:
    """A sample taken `ago` seconds before NOW whose window resets `reset_in` seconds after NOW."""
    return Sample(NOW - ago, used, None if reset_in is None else NOW + reset_in, minutes)


# (name, samples, expected burn %/h, expected exhausts_at - NOW, exhausts_before_reset, projected at reset, method)
CASES = [
    ("no samples", [], None, None, None, None, "none"),
    ("only unknown percentages", [s(60, None)], None, None, None, None, "none"),
    # one sample, window known: 50 % used 2 h into a 5 h window → 25 %/h, 100 % in 2 h, reset in 3 h
    ("one sample, window average", [s(0, 50, 3 * H, 300)], 25.0, 2 * H, True, 125.0, "window_average"),
    ("one sample, window length unknown", [s(0, 50, 3 * H)], None, None, None, None, "none"),
    ("flat usage", [s(1200, 40, 2 * H, 300), s(600, 40, 2 * H, 300), s(0, 40, 2 * H, 300)],
     0.0, None, False, 40.0, "least_squares"),
    # 70 → 80, then a reset (the percentage drops): only 5 → 10 → 15 count, 5 points per 10 min = 30 %/h
    ("reset in between", [s(3000, 70, -100, 300), s(2400, 80, -100, 300), s(1200, 5, 4 * H, 300),
                          s(600, 10, 4 * H, 300), s(0, 15, 4 * H, 300)],
     30.0, 85 / 30 * H, True, 15 + 30 * 4, "least_squares"),
    # no drop, but the first sample's reset time had passed when the second was taken: a new window, so
    # the rate is the new window's average (60 % in its first hour), not 50 → 60 in 20 min (30 %/h)
    ("reset time passed between samples", [s(1200, 50, -600, 300), s(0, 60, 4 * H, 300)],
     60.0, 40 / 60 * H, True, 60 + 60 * 4, "window_average"),
    ("unknown reset time", [s(1800, 20), s(900, 22.5), s(0, 25)], 10.0, 7.5 * H, None, None, "least_squares"),
    ("already exhausted", [s(600, 99, H, 300), s(0, 100, H, 300)], 6.0, 0.0, True, 106.0, "least_squares"),
    # samples closer than MIN_SPAN_S: fall back to the window average of the last one (30 % in 3 h = 10 %/h)
    ("samples too close together", [s(30, 29.9, 2 * H, 300), s(0, 30, 2 * H, 300)],
     10.0, 7 * H, False, 50.0, "window_average"),
]


@pytest.mark.parametrize(("name", "samples", "burn", "eta", "before", "projected", "method"), CASES,
                         ids=[c[0] for c in CASES])
def test_forecast_table(name, samples, burn, eta, before, projected, method):
    f = forecast_window("primary", samples, NOW)
    assert f.method == method
    assert f.burn_per_hour == (pytest.approx(burn) if burn is not None else None)
    assert (f.exhausts_at - NOW if f.exhausts_at is not None else None) == (
        pytest.approx(eta) if eta is not None else None)
    assert f.exhausts_before_reset is before
    assert f.projected_at_reset == (pytest.approx(projected) if projected is not None else None)


def test_reset_passed_since_the_last_sample_is_not_a_forecast():
    f = forecast_window("primary", [s(7200, 40, 0, 300), s(3600, 60, -60, 300)], NOW)
    assert f.reset_passed and f.used_now == 0 and f.burn_per_hour is None
    assert "reset since the last observation" in describe(f, NOW)


def test_least_squares_is_robust_to_one_rounded_sample():
    """The last value came back slightly rounded down: the slope still sees ~11.6 %/h, where the last two
    samples alone would say 0."""
    samples = [s(3600 - i * 600, v, 3 * H, 300) for i, v in enumerate([10, 12, 14, 16, 18, 20, 19.995])]
    f = forecast_window("primary", samples, NOW)
    assert len(current_window(samples)) == 7
    assert 10 < f.burn_per_hour < 12.5


def test_jitter_of_reset_after_seconds_is_not_a_reset():
    samples = [Sample(NOW - 600, 10, NOW + 3600, 300), Sample(NOW, 12, NOW + 3601, 300)]
    assert len(current_window(samples)) == 2


def test_recorded_usage_headers_through_the_parser():
    """Real-looking `x-codex-*` headers, one answer every 10 minutes, fed through `parse_usage_headers`.

    5-hour window: one answer from the previous window (97 %), then 20 % → 32 % over an hour, reset ~3 h
    after the last answer (reset-after-seconds counts down, truncated to whole seconds as the upstream sends
    them); weekly window: 59.5 % → 63 % over 70 minutes, reset in 36 h (an absolute reset-at).
    """
    t0 = NOW - 3600
    primary_reset = NOW + 3 * H
    weekly_reset = NOW + 36 * H
    recorded = [{  # the answer before the 5-hour window reset
        "x-codex-primary-used-percent": "97.0", "x-codex-primary-window-minutes": "300",
        "x-codex-primary-reset-after-seconds": "30",
        "x-codex-secondary-used-percent": "59.5", "x-codex-secondary-window-minutes": str(WEEK_MIN),
        "x-codex-secondary-reset-at": str(int(weekly_reset)),
    }]
    times = [t0 - 600]
    for i in range(7):
        at = t0 + i * 600 + 0.37 * i  # answers do not arrive on the second
        recorded.append({
            "x-codex-primary-used-percent": f"{20 + 2 * i:.1f}",
            "x-codex-primary-window-minutes": "300",
            "x-codex-primary-reset-after-seconds": str(int(primary_reset - at)),
            "x-codex-secondary-used-percent": f"{60 + 0.5 * i:.1f}",
            "x-codex-secondary-window-minutes": str(WEEK_MIN),
            "x-codex-secondary-reset-at": str(int(weekly_reset)),
        })
        times.append(at)
    primary, secondary = [], []
    for headers, at in zip(recorded, times, strict=True):
        obs = parse_usage_headers(headers, at)
        assert obs is not None and obs.primary is not None and obs.secondary is not None
        primary.append(Sample(obs.seen_at, obs.primary.used_percent, obs.primary.reset_at, obs.primary.window_minutes))
        secondary.append(Sample(obs.seen_at, obs.secondary.used_percent, obs.secondary.reset_at,
                                obs.secondary.window_minutes))
    now = times[-1]
    p = forecast_window("primary", primary, now)
    assert p.samples == 7  # the 97 % answer belongs to the previous window
    assert p.burn_per_hour == pytest.approx(12.0, rel=1e-3)  # 12 points in 3602.2 s
    assert p.used_now == pytest.approx(32.0)
    assert p.exhausts_at - now == pytest.approx(68 / 12 * H, rel=1e-3)  # ~5 h 40 min
    assert p.exhausts_before_reset is False  # the reset is ~3 h away
    assert p.projected_at_reset == pytest.approx(32 + 12 * (primary_reset - now) / H, abs=0.1)
    assert describe(p, now).startswith("will not run out before its reset at ")

    w = forecast_window("secondary", secondary, now)
    assert w.samples == 8  # no reset in the weekly window
    assert w.burn_per_hour == pytest.approx(3.0, rel=0.05)  # 59.5 → 63 % in 70 min
    assert w.exhausts_before_reset is True  # 37 points at ~3 %/h ≈ 12 h < 36 h
    assert w.exhausts_at - now == pytest.approx(37 / w.burn_per_hour * H)
    assert describe(w, now).startswith("exhausts in ~12 h") and ", before its reset at " in describe(w, now)


@pytest.mark.parametrize(("forecast_args", "expected"), [
    (([s(0, 50, 3 * H, 300)],), "exhausts in ~2 h, before its reset at "),
    (([s(1200, 40, 2 * H, 300), s(0, 40, 2 * H, 300)],), "not rising: will not run out before its reset"),
    (([s(0, 50, 3 * H)],), "not enough history for a forecast"),
    (([],), "no usage observed yet"),
    (([s(0, 100, 3 * H, 300)],), "exhausted until its reset at "),
    (([s(1800, 20), s(0, 25)],), "exhausts in ~7 h 30 min (reset time unknown)"),
])
def test_describe_in_words(forecast_args, expected):
    assert describe(forecast_window("primary", *forecast_args, NOW), NOW).startswith(expected)


def test_ratelimit_buckets_forecast_their_net_drain():
    """`x-ratelimit-*` buckets refill: a drop is not a reset, the "reset" (time to full) is not a deadline."""
    # 20 → 30 → 25 (a refill) → 35 → 40 % used, one sample a minute, each "full again in 12 ms"
    samples = [Sample(NOW - 240 + 60 * i, used, NOW - 240 + 60 * i + 0.012)
               for i, used in enumerate([20, 30, 25, 35, 40])]
    f = forecast_window("requests", samples, NOW)
    assert f.bucket and f.samples == 5 and not f.reset_passed
    assert f.burn_per_hour == pytest.approx(4.5 * 60)  # least squares: 4.5 points a minute, net of the refill
    assert f.reset_at is None and f.exhausts_before_reset is None and f.projected_at_reset is None
    assert f.exhausts_at - NOW == pytest.approx(60 / 4.5 * 60)
    assert describe(f, NOW) == "at this net rate it runs dry in ~13 min"
    refilling = forecast_window("tokens", [Sample(NOW - 120, 50, None), Sample(NOW, 20, None)], NOW)
    assert refilling.burn_per_hour == 0 and describe(refilling, NOW) == "not draining"
    assert scaled(f, 2.0, NOW).bucket


def test_latest_forecast_uses_the_health_observation():
    health = AccountHealth(account_id="a", usage_seen_at=NOW,
                           secondary=UsageWindow(used_percent=70, window_minutes=WEEK_MIN, reset_at=NOW + 24 * H))
    f = latest_forecast(health, "secondary", NOW)
    assert f.method == "window_average"
    assert f.burn_per_hour == pytest.approx(70 / (6 * 24))  # 70 % in the first 6 days
    assert f.exhausts_before_reset is False and f.headroom_until_reset()
    assert latest_forecast(health, "primary", NOW).method == "none"


@pytest.mark.parametrize(("shares", "remaining", "expected"), [
    ({"x": 10, "a": 30, "b": 10}, ["a", "b"], {"a": 1.25, "b": 1.25}),  # x's 10 spread 7.5 / 2.5
    ({"x": 10, "a": 30, "b": 0}, ["a", "b"], {"a": 40 / 30, "b": 1.0}),  # an idle account gets no share
    ({"x": 0, "a": 5}, ["a"], {"a": 1.0}),  # x served nothing: nothing moves
    ({"x": 10}, ["a", "b"], {"a": None, "b": None}),  # nobody else served: per-request cost unknown
    ({"x": 10, "a": 5}, ["a", "x"], {"a": 3.0}),  # the removed account is never its own heir
])
def test_redistribution_factors(shares, remaining, expected):
    assert redistribution_factors(shares, "x", remaining) == pytest.approx(expected)


def test_scaled_forecast_moves_exhaustion_earlier():
    base = forecast_window("primary", [s(0, 50, 3 * H, 300)], NOW)  # 25 %/h, out in 2 h
    faster = scaled(base, 2.0, NOW)
    assert faster.burn_per_hour == pytest.approx(50.0)
    assert faster.exhausts_at - NOW == pytest.approx(H)
    assert faster.projected_at_reset == pytest.approx(200.0)
    flat = forecast_window("primary", [s(600, 40, 2 * H, 300), s(0, 40, 2 * H, 300)], NOW)
    assert scaled(flat, 3.0, NOW).exhausts_at is None  # zero stays zero
